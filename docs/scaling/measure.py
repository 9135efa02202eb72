"""The measured figures of docs/SCALING.md: training images/s of each stage on this CPU, fp32 and bf16, and the
CPU cost of decoding + augmenting one ImageNet-sized JPEG.

    OMP_NUM_THREADS=1 python docs/scaling/measure.py --models resnet50,resnet101 --batch-size 4 > measured.json

Training steps are timm_blockdrop.tools.train_bench.measure_train_throughput (plain cross-entropy finetuning of
the base, a curriculum step, a joint-finetune step; interleaved rounds, median), with fresh weights and random
224 px inputs; bf16 runs the same steps under torch.autocast('cpu', torch.bfloat16), as Accelerate's
mixed_precision=bf16 does. Decoding is PIL's JPEG decode + timm's ImageNet train transform (RandomResizedCrop 224,
flip, normalise), timed with torch.utils.benchmark on a 500x375 JPEG (the size of a typical ImageNet image).
"""
import argparse
import io
import json
import sys

import numpy as np
import timm
import torch
import torch.utils.benchmark as benchmark
from PIL import Image

from timm_blockdrop.data import train_transform
from timm_blockdrop.tools.train_bench import measure_train_throughput


def jpeg(width=500, height=375, smooth=True, seed=0):
    rng = np.random.default_rng(seed)
    if smooth:  # a photograph-like image: smooth gradients (cheap to entropy-code)
        pixels = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC))
    else:  # noise: the costliest JPEG of its size to decode
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format='JPEG', quality=90)
    return out.getvalue()


def decode_cost(model):
    transform = train_transform(model)
    rows = {}
    for kind in ('smooth', 'noise'):
        data = jpeg(smooth=kind == 'smooth')
        timer = benchmark.Timer('transform(Image.open(io.BytesIO(data)).convert("RGB"))',
                                globals=dict(transform=transform, Image=Image, io=io, data=data))
        rows[kind] = dict(jpeg_kb=round(len(data) / 1024, 1), ms_per_image=timer.blocked_autorange(min_run_time=2).median * 1e3)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', default='resnet50,resnet101')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--steps', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = dict(threads=1, decode=decode_cost(timm.create_model('resnet50')), train=[])
    for name in args.models.split(','):
        for precision in ('fp32', 'bf16'):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
                row = measure_train_throughput(name, batch_size=args.batch_size, steps=args.steps, warmup=1,
                                               rounds=args.rounds)
            results['train'].append(dict(row, precision=precision))
            print(json.dumps(results['train'][-1]), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
