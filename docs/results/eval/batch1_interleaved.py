"""Batch-1 time of a fused BlockDrop model's own forward against its fused full network, interleaved: 15 rounds of
64 forwards each, alternating which goes first, medians printed. To compare two commits, run it under each with
PYTHONPATH set to a worktree of that commit.

    OMP_NUM_THREADS=2 .venv/bin/python docs/results/eval/batch1_interleaved.py MODEL_FOLDER
"""
import statistics
import sys
import time

import torch

from timm_blockdrop.models.loading import load_model

torch.set_num_threads(2)
fused = load_model(checkpoint=sys.argv[1], require='blockdrop').eval().fuse()
xs = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(64)]
times = {'blockdrop': [], 'full': []}
with torch.inference_mode():
    for _ in range(30):
        fused(xs[0])
        fused.forward_full(xs[0])
    for r in range(15):
        order = [('blockdrop', fused), ('full', fused.forward_full)]
        for name, fn in order if r % 2 else order[::-1]:
            t = time.perf_counter()
            for x in xs:
                fn(x)
            times[name].append((time.perf_counter() - t) / len(xs) * 1e3)
b, f = statistics.median(times['blockdrop']), statistics.median(times['full'])
print(f'blockdrop {b:.3f} ms, full {f:.3f} ms, speed-up {f / b:.3f}x (medians of 15 rounds, batch 1)')
