"""Is there anything for a per-image policy to gain? On one base ResNet, each image's smallest DistributeK-k (k = 1
.. K; the policies are nested) from which it stays classified right up to k_max, against the static DistributeK-k_max
for all images. An oracle that gives every image that k (and k_max to the others) has the static policy's accuracy
at fewer blocks on average: the ceiling of a per-image depth choice within that family. ("Stays right" leaves out
the lucky right answers of a very shallow network.)

    .venv/bin/python docs/results/eval/depth_oracle.py WEIGHTS_FILE DATA SPLIT OUT.json   (a cifar_resnet32 base)
"""
import json
import sys

import torch

import timm_blockdrop
from timm_blockdrop.data import eval_transform, find_columns, load_split, make_loader, with_transform
from timm_blockdrop.models.loading import load_model
from timm_blockdrop.models.policies import distributek


def main(weights, data, split, out):
    torch.set_num_threads(2)
    model = timm_blockdrop.wrap(load_model('cifar_resnet32', pretrained_file=weights)).eval()
    fused = model.fuse()
    dataset = load_split(data, split)
    image_column, label_column = find_columns(dataset, None, None, data)
    loader = make_loader(with_transform(dataset, eval_transform(model), image_column, label_column), 500, data=data)
    K = model.num_blocks
    columns = []  # (N,) correct under DistributeK-k, k = 1..K
    with torch.inference_mode():
        batches = list(loader)
        for k in range(1, K + 1):
            keep = distributek(1, K, k, model.stage_sizes)
            columns.append(torch.cat([fused.forward_with_policy(x, keep.expand(len(x), -1)).argmax(1) == y
                                      for x, y in batches]))
    correct = torch.stack(columns, 1)  # (N, K)
    n = correct.shape[0]
    rows = []
    for k_max in range(1, K + 1):
        ok = correct[:, :k_max]
        # stays right: right at k and at every k' in k .. k_max (the suffix of all-right columns)
        suffix = ok.flip(1).int().cumprod(1).flip(1).bool()
        first = torch.where(ok[:, -1], k_max - suffix.sum(1) + 1, torch.full((n,), k_max))
        rows.append(dict(k=k_max, static_top1=100 * float(ok[:, -1].float().mean()),
                         oracle_blocks_mean=float(first.float().mean())))
    report = dict(weights=weights, data=data, split=split, n_images=n, policy_family='distributek', rows=rows)
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    for r in rows:
        print(f"k_max {r['k']:2d}: {r['static_top1']:6.2f} %, static {r['k']} blocks, "
              f"oracle {r['oracle_blocks_mean']:5.2f} blocks")


if __name__ == '__main__':
    main(*sys.argv[1:5])
