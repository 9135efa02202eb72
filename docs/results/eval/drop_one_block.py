"""Accuracy of the shared CIFAR-10 ResNet-32 on the first 1000 test images with one block dropped (each of the 15),
from the repository root: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python docs/results/eval/drop_one_block.py
Output (measured): docs/results/eval/drop_one_block.txt"""
import torch, timm, timm_blockdrop
from timm_blockdrop.data import load_split, eval_transform, with_transform, make_loader
base = timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file='../shared/weights/cifar10-resnet/resnet32-d509ac18.th'))
m = timm_blockdrop.wrap(base).eval()
ds = with_transform(load_split('../shared/data/cifar10','test').select(range(1000)), eval_transform(m), 'img', 'label')
xs, ys = [], []
for b in make_loader(ds, 500, num_workers=0):
    xs.append(b[0]); ys.append(b[1])
x = torch.cat(xs); y = torch.cat(ys)
with torch.inference_mode():
    full = torch.ones(len(x), 15)
    print('full', (m.forward_with_policy(x, full).argmax(1) == y).float().mean().item())
    for k in range(15):
        keep = full.clone(); keep[:, k] = 0
        print(k, round((m.forward_with_policy(x, keep).argmax(1) == y).float().mean().item(), 3))
