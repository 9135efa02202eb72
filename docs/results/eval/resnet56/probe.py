"""How much of the shared CIFAR-10 ResNet-56 (27 blocks) can be dropped before any finetuning: the first 2,000 val
images (train[45000:47000]; note the shared ResNets were trained on them, so the levels are optimistic, the drops
between rows are what this probe is for) with each block dropped alone, and under DistributeK-k for several k.
From the repository root:
    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python docs/results/eval/resnet56/probe.py
Output: docs/results/eval/resnet56/probe.json"""
import json
import os

import torch

import timm_blockdrop
from timm_blockdrop.data import eval_transform, find_columns, load_split, make_loader, with_transform
from timm_blockdrop.models.loading import load_model
from timm_blockdrop.models.policies import heuristic_policy

shared = os.environ.get('BLOCKDROP_SHARED', '../shared')
data = f'{shared}/data/cifar10'
m = timm_blockdrop.wrap(load_model('cifar_resnet56',
                                   pretrained_file=f'{shared}/weights/cifar10-resnet/resnet56-4bfd9763.th')).eval()
split = load_split(data, 'train[45000:47000]')
ds = with_transform(split, eval_transform(m), *find_columns(split, None, None, data))
x, y = map(torch.cat, zip(*[(b[0], b[1]) for b in make_loader(ds, 500, num_workers=0)]))
K = m.num_blocks


def top1(keep):
    with torch.inference_mode():
        return round(100 * sum((m.forward_with_policy(x[i:i + 500], keep[i:i + 500]).argmax(1) == y[i:i + 500])
                               .sum().item() for i in range(0, len(x), 500)) / len(x), 2)


full = torch.ones(len(x), K)
out = {'images': 'train[45000:47000]', 'full': top1(full), 'drop_one': [], 'distributek': {}}
for k in range(K):
    keep = full.clone()
    keep[:, k] = 0
    out['drop_one'].append(top1(keep))
for k in (9, 12, 14, 16, 18, 21, 24):
    out['distributek'][k] = top1(heuristic_policy('distributek', len(x), K, k, m.stage_sizes, None).float())
print(json.dumps(out))
json.dump(out, open(os.path.join(os.path.dirname(__file__), 'probe.json'), 'w'), indent=1)
