"""Is there anything for a per-image policy to gain, and can a cheap policy see it? On one base ResNet-32:

- **Depth oracle.** Each image's smallest DistributeK-k (k = 1 .. K; the policies are nested) from which it stays
  classified right up to k_max, against the static DistributeK-k_max for all images. An oracle that gives every
  image that k (and k_max to the others) has the static policy's accuracy at fewer blocks on average: the ceiling of
  a per-image depth choice within that family. ("Stays right" leaves out the lucky right answers of a very shallow
  network.)
- **Easiness probe.** An image is "easy" if DistributeK-k (k = ``PROBE_K``) gets it right. A logistic regression on
  what the stem policy sees (the stem output pooled to 4x4), one on the image pooled to 8x8, and ones on the output
  of the first and of the second stage (all their blocks run, pooled to 4x4: what a policy deciding later could
  see) are fitted on the first half of the images and scored by ROC AUC on the second half. The full network's max
  softmax probability (it runs all K blocks) is the reference. AUC 0.5 is chance.

    .venv/bin/python docs/results/eval/per_image_headroom.py WEIGHTS_FILE DATA SPLIT OUT.json [PROBE_K]
"""
import json
import sys

import torch
import torch.nn.functional as F

import timm_blockdrop
from timm_blockdrop.data import eval_transform, find_columns, load_split, make_loader, with_transform
from timm_blockdrop.models.loading import load_model
from timm_blockdrop.models.policies import distributek


def auc(score: torch.Tensor, label: torch.Tensor) -> float:
    """ROC AUC by ranks (Mann-Whitney U); tied scores share their mean rank."""
    values, inverse = score.unique(return_inverse=True)
    order = score.argsort()
    ranks = torch.empty_like(score, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.float64)
    ranks = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)[inverse] / \
        torch.bincount(inverse, minlength=len(values))[inverse]
    pos = label.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-3):
    mean, std = x.mean(0), x.std(0) + 1e-6
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin((x - mean) / std).squeeze(1), y.float())
        loss = loss + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lambda z: lin((z - mean) / std).squeeze(1)


def depth_oracle(correct: torch.Tensor):
    n, num_blocks = correct.shape
    rows = []
    for k_max in range(1, num_blocks + 1):
        ok = correct[:, :k_max]
        suffix = ok.flip(1).int().cumprod(1).flip(1)  # 1 where the image is right at k and every k' up to k_max
        first = torch.where(ok[:, -1], k_max - suffix.sum(1) + 1, torch.full((n,), k_max))
        rows.append(dict(k=k_max, static_top1=100 * float(ok[:, -1].float().mean()),
                         oracle_blocks_mean=float(first.float().mean())))
    return rows


def main(weights, data, split, out, probe_k=6):
    probe_k = int(probe_k)
    torch.set_num_threads(2)
    model = timm_blockdrop.wrap(load_model('cifar_resnet32', pretrained_file=weights)).eval()
    fused = model.fuse()
    dataset = load_split(data, split)
    image_column, label_column = find_columns(dataset, None, None, data)
    loader = make_loader(with_transform(dataset, eval_transform(model), image_column, label_column), 500, data=data)
    K = model.num_blocks
    correct, stems, images, confidence, stages = [], [], [], [], [[] for _ in model.stage_sizes[:-1]]
    with torch.inference_mode():
        for x, y in loader:
            correct.append(torch.stack([
                fused.forward_with_policy(x, distributek(len(x), K, k, model.stage_sizes)).argmax(1) == y
                for k in range(1, K + 1)], 1))
            h = fused.forward_stem(x)
            stems.append(F.adaptive_avg_pool2d(h, 4).flatten(1))
            start = 0
            for i, n in enumerate(model.stage_sizes[:-1]):
                for block in fused.kernels()[start:start + n]:
                    h = block.full(h)
                start += n
                stages[i].append(F.adaptive_avg_pool2d(h, 4).flatten(1))
            images.append(F.adaptive_avg_pool2d(x, 8).flatten(1))
            confidence.append(fused.forward_full(x).softmax(1).amax(1))
    correct = torch.cat(correct)
    easy = correct[:, probe_k - 1]
    half = len(easy) // 2
    probe = dict(k=probe_k, easy_share=100 * float(easy.float().mean()), fit_on=f'first {half}',
                 scored_on=f'last {len(easy) - half}')
    features = [('stem_4x4', torch.cat(stems)), ('image_8x8', torch.cat(images))] + [
        (f'stage{i + 1}_4x4', torch.cat(f)) for i, f in enumerate(stages)]
    for name, feats in features:
        with torch.enable_grad():
            score = fit_logistic(feats[:half].clone(), easy[:half].clone())
        with torch.no_grad():
            probe[f'auc_{name}'] = auc(score(feats[half:]), easy[half:])
    probe['auc_full_model_confidence'] = auc(torch.cat(confidence)[half:], easy[half:])
    report = dict(weights=weights, data=data, split=split, n_images=len(easy), policy_family='distributek',
                  oracle=depth_oracle(correct), probe=probe)
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    for r in report['oracle']:
        print(f"k_max {r['k']:2d}: {r['static_top1']:6.2f} % static at {r['k']} blocks, "
              f"the oracle at {r['oracle_blocks_mean']:5.2f}")
    print(json.dumps(probe, indent=1))


if __name__ == '__main__':
    main(*sys.argv[1:6])
