"""Where a batch-1 forward of a fused BlockDrop ResNet-32 spends its time on this CPU (torch.profiler, 2 threads):
the convolution calls by input shape. Shows that each call costs about the same whatever its size, so a policy
network's time is set by its number of calls.

    .venv/bin/python docs/results/eval/batch1_profile.py MODEL_FOLDER > OUT.txt
"""
import sys

import torch
from torch.profiler import profile

from timm_blockdrop.models.loading import load_model

torch.set_num_threads(2)
model = load_model(checkpoint=sys.argv[1], require='blockdrop').eval()
fused = model.fuse()
x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(50):
        fused(x)
    for name, fn in (('learned policy', fused), ('all blocks, no policy', fused.forward_full)):
        with profile(record_shapes=True) as prof:
            for _ in range(100):
                fn(x)
        print(f'== {sys.argv[1]}: {name}, batch 1, 100 forwards, 2 threads')
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by='self_cpu_time_total', row_limit=16, max_shapes_column_width=50))
