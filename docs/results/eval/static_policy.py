"""How dynamic is a learned policy? Top-1 of a BlockDrop model under its learned (greedy, per-image) policy against
the same ResNet under one static policy for every image: the learned policy's most frequent one on the same images.

    .venv/bin/python docs/results/eval/static_policy.py MODEL_FOLDER DATA SPLIT [OUT.json]
"""
import collections
import json
import sys

import torch

from timm_blockdrop.data import eval_transform, find_columns, load_split, make_loader, with_transform
from timm_blockdrop.models.loading import load_model


def main(folder, data, split, out=None):
    torch.set_num_threads(2)
    model = load_model(checkpoint=folder, require='blockdrop').eval()
    fused = model.fuse()
    dataset = load_split(data, split)
    image_column, label_column = find_columns(dataset, None, None, data)
    loader = make_loader(with_transform(dataset, eval_transform(model), image_column, label_column), 500, data=data)
    batches = list(loader)
    with torch.inference_mode():
        keeps, correct = [], 0
        for images, labels in batches:
            logits, keep = fused.forward_and_policy(images)
            keeps.append(keep.bool())
            correct += int((logits.argmax(1) == labels).sum())
        keep_all = torch.cat(keeps)
        counts = collections.Counter(tuple(int(v) for v in row) for row in keep_all)
        common, n_common = counts.most_common(1)[0]
        static = torch.tensor(common, dtype=torch.bool)
        correct_static = sum(int((fused.forward_with_policy(images, static.expand(len(images), -1)).argmax(1)
                                  == labels).sum()) for images, labels in batches)
    n = len(keep_all)
    report = dict(model=folder, data=data, split=split, n_images=n, learned_top1=100 * correct / n,
                  learned_blocks_mean=float(keep_all.sum(1).float().mean()), unique_policies=len(counts),
                  most_frequent_policy=list(common), most_frequent_share=100 * n_common / n,
                  static_top1=100 * correct_static / n, static_blocks=int(static.sum()))
    print(json.dumps(report, indent=1))
    if out:
        with open(out, 'w') as f:
            json.dump(report, f, indent=1)


if __name__ == '__main__':
    main(*sys.argv[1:5])
