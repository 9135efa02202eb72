"""Can a cheap policy tell easy images from hard ones? On one base ResNet (val split), an image is "easy" if
DistributeK-k classifies it right (k = 6 by default: the static policy the stem policy stage settled on). A logistic
regression on what the stem policy sees (the stem output pooled to 4x4) and one on the image pooled to 8x8 are fitted
on the first half of the images and scored by ROC AUC on the second; the full network's max softmax probability (an
expensive signal: it runs all 15 blocks) is the reference. AUC 0.5 = no better than chance.

    .venv/bin/python docs/results/eval/easiness_probe.py WEIGHTS_FILE DATA SPLIT OUT.json [K]
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
    """ROC AUC by ranks (Mann-Whitney U); ties get their mean rank."""
    order = score.argsort()
    ranks = torch.empty_like(score)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=score.dtype)
    for value in score.unique()[score.unique(return_counts=True)[1] > 1]:  # mean rank for ties
        ranks[score == value] = ranks[score == value].mean()
    pos = label.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-3) -> torch.nn.Linear:
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


def main(weights, data, split, out, k=6):
    k = int(k)
    torch.set_num_threads(2)
    model = timm_blockdrop.wrap(load_model('cifar_resnet32', pretrained_file=weights)).eval()
    fused = model.fuse()
    dataset = load_split(data, split)
    image_column, label_column = find_columns(dataset, None, None, data)
    loader = make_loader(with_transform(dataset, eval_transform(model), image_column, label_column), 500, data=data)
    keep = distributek(1, model.num_blocks, k, model.stage_sizes)
    stems, images, easy, confidence = [], [], [], []
    with torch.inference_mode():
        for x, y in loader:
            easy.append(fused.forward_with_policy(x, keep.expand(len(x), -1)).argmax(1) == y)
            stems.append(F.adaptive_avg_pool2d(fused.forward_stem(x), 4).flatten(1))
            images.append(F.adaptive_avg_pool2d(x, 8).flatten(1))
            confidence.append(fused.forward_full(x).softmax(1).amax(1))
    easy = torch.cat(easy)
    half = len(easy) // 2
    report = dict(weights=weights, data=data, split=split, n_images=len(easy), k=k,
                  easy_share=100 * float(easy.float().mean()), fit_on=f'first {half}', scored_on=f'last {len(easy) - half}')
    for name, feats in (('stem_4x4', torch.cat(stems)), ('image_8x8', torch.cat(images))):
        with torch.enable_grad():
            score = fit_logistic(feats[:half].clone(), easy[:half].clone())
        with torch.no_grad():
            report[f'auc_{name}'] = auc(score(feats[half:]), easy[half:])
    report['auc_full_model_confidence'] = auc(torch.cat(confidence)[half:], easy[half:])
    print(json.dumps(report, indent=1))
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)


if __name__ == '__main__':
    main(*sys.argv[1:6])
