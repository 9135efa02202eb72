"""``blockdrop bench``: does dropping blocks save wall-clock time, and how close to the FLOPs ideal?

For each batch size, times side by side, with warm-up and interleaved repeats:

- ``full_timm``: the plain timm base model (its own modules, NCHW), every block;
- ``full_fast``: the same fused inference engine the routed path uses, every block, no policy net;
- ``masked``: every block on the whole batch, mixed by the policy (what most public code does);
- ``routed``: the policy net, then each block only on the samples that keep it.

``full_ms = min(full_timm_ms, full_fast_ms)``; ``ideal_ms = full_ms * flops_ratio`` where ``flops_ratio`` is
the mean BlockDrop FLOPs (policy included) over the full FLOPs; ``efficiency = ideal_ms / routed_ms``.
"""
import math
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .arguments import check_device, check_output_file, check_positive, write_json
from ..models.fused import tune_cpu_allocator
from ..models.loading import as_blockdrop, load_model
from .train_bench import LAYOUTS, measure_train_settings, train_settings

__all__ = ['bench_inference', 'interleaved_times', 'ms_summary', 'add_bench_arguments', 'run_bench']


def _time_calls(fn: Callable[[int], object], n_inner: int) -> float:
    """Seconds per call of ``fn(i)`` over ``n_inner`` calls."""
    start = time.perf_counter()
    for i in range(n_inner):
        fn(i)
    return (time.perf_counter() - start) / n_inner


def interleaved_times(
        variants: Dict[str, Callable[[int], object]], repeats: int, min_seconds: float, n_inputs: int,
) -> Dict[str, List[float]]:
    """Warm each variant up, then time them in turn ``repeats`` times; returns seconds per call.

    Each timing covers whole cycles over the ``n_inputs`` inputs, so every input (and its policy) weighs the same
    as in the FLOPs ratio.
    """
    inner = {}
    for name, fn in variants.items():
        for i in range(n_inputs):  # warm-up: allocator, oneDNN primitive caches, weight reorders
            fn(i)
        once = _time_calls(fn, n_inputs) or 1e-6
        inner[name] = n_inputs * max(1, math.ceil(min_seconds / (once * n_inputs)))
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_time_calls(fn, inner[name]))
    return times


def ms_summary(seconds: List[float], batch: float) -> Dict[str, float]:
    """Milliseconds per image of each timing (seconds per call of ``batch`` images): median, quartiles, range."""
    ms = sorted(1000.0 * s / batch for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return dict(median=statistics.median(ms), p25=q[0], p75=q[2], min=ms[0], max=ms[-1])


def bench_inference(
        model,
        batch_sizes: Sequence[int] = (1, 256),
        policy: str = 'random',
        keep_prob: float = 0.31,
        image_size: Optional[int] = None,
        repeats: int = 7,
        device: str = 'cpu',
        seed: int = 0,
        samples_at_batch1: int = 16,
        min_seconds: float = 0.05,
) -> List[Dict]:
    """Time full_timm / full_fast / masked / routed for each batch size; see the module docstring."""
    if policy not in ('random', 'learned'):
        raise ValueError(f"--policy must be 'random' or 'learned', got '{policy}'")
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f'--keep must lie in [0, 1], got {keep_prob}')
    check_positive(repeats=repeats, image_size=image_size)  # --image-size 0 is no size, not "the default"
    model = model.eval().to(device)
    base = model.base
    size = model.pretrained_cfg['input_size'][-1] if image_size is None else image_size
    results = []
    with torch.inference_mode():
        fused = model.fuse()  # explicit: the frozen, fused inference copy
        table, policy_flops = model.flops_table((size, size))
        for batch in batch_sizes:
            g = torch.Generator().manual_seed(seed)
            n_sets = samples_at_batch1 if batch == 1 else 1  # batch 1: cycle through several images/policies
            xs = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(n_sets)]
            if policy == 'random':
                keeps = [torch.bernoulli(torch.full((batch, model.num_blocks), keep_prob), generator=g).to(device)
                         for _ in range(n_sets)]
            else:
                keeps = [model.default_policy(x) for x in xs]
            flops = torch.cat([model.flops(k, include_policy=True, img_size=(size, size)) for k in keeps])
            flops_ratio = float(flops.mean()) / table.full

            def routed(i):  # the policy network runs in both cases; random keeps replace its decisions
                return fused.forward_and_policy(xs[i % n_sets], keeps[i % n_sets] if policy == 'random' else None)[0]

            variants = {
                'full_timm': lambda i: base(xs[i % n_sets]),
                'full_fast': lambda i: fused.forward_full(xs[i % n_sets]),
                'masked': lambda i: model.forward_with_policy(xs[i % n_sets], keeps[i % n_sets], mode='masked'),
                'routed': routed,
                'policy': lambda i: fused.policy_probs(xs[i % n_sets]),
            }
            times = interleaved_times(variants, repeats, min_seconds, n_sets)
            s = {name: ms_summary(t, batch) for name, t in times.items()}
            full_ms = min(s['full_timm']['median'], s['full_fast']['median'])
            ideal_ms = full_ms * flops_ratio
            results.append({
                'model': model.pretrained_cfg.get('architecture'),
                'batch_size': batch,
                'image_size': size,
                'policy': policy,
                'keep': keep_prob if policy == 'random' else None,
                'full_ms': full_ms,
                'full_timm_ms': s['full_timm']['median'],
                'full_fast_ms': s['full_fast']['median'],
                'masked_ms': s['masked']['median'],
                'routed_ms': s['routed']['median'],
                'policy_ms': s['policy']['median'],
                'ideal_ms': ideal_ms,
                'flops_ratio': flops_ratio,
                'policy_flops_ratio': policy_flops / table.full,
                'policy_time_ratio': s['policy']['median'] / full_ms,
                'efficiency': ideal_ms / s['routed']['median'],
                'blocks_mean': float(torch.cat(keeps).float().sum(1).mean()),
                'spread_ms': {name: dict(p25=v['p25'], p75=v['p75']) for name, v in s.items()},
                'repeats': repeats,
            })
    return results


def format_results(results: List[Dict]) -> str:
    head = (f"{'model':<26} {'batch':>5} {'full_timm':>9} {'full_fast':>9} {'masked':>8} {'routed':>8} "
            f"{'ideal':>8} {'FLOPs':>6} {'effic.':>6} {'policy':>7}")
    lines = [head, '  (ms per image, medians; FLOPs = BlockDrop/full, policy = policy-net time / full time)']
    for r in results:
        lines.append(
            f"{r['model']:<26} {r['batch_size']:>5} {r['full_timm_ms']:>9.3f} {r['full_fast_ms']:>9.3f} "
            f"{r['masked_ms']:>8.3f} {r['routed_ms']:>8.3f} {r['ideal_ms']:>8.3f} {r['flops_ratio']:>6.3f} "
            f"{r['efficiency']:>6.3f} {100 * r['policy_time_ratio']:>6.1f}%")
    return '\n'.join(lines)


def add_bench_arguments(sub) -> None:
    p = sub.add_parser('bench', help='time routed vs full vs masked inference (and training throughput)')
    p.add_argument('--model', help='timm model name (blockdrop_*)')
    p.add_argument('--checkpoint', help='checkpoint folder (save_for_hf layout); default: untrained weights')
    p.add_argument('--keep', type=float, default=0.31, help='keep probability of the random policy')
    p.add_argument('--policy', default='random', help='random (per-sample Bernoulli(keep)) or learned')
    p.add_argument('--batch-sizes', default='1,256', help='comma-separated')
    p.add_argument('--image-size', type=int, default=None)
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None)
    p.add_argument('--train', action='store_true',
                   help='time training steps instead: plain finetuning vs a curriculum and a joint-finetune step')
    p.add_argument('--finetune-mode', default='masked', choices=('masked', 'routed'),
                   help='with --train: how the joint-finetune step runs the blocks')
    p.add_argument('--pretrained-file', default=None, help='with --train: weights of a base model')
    p.add_argument('--precision', default=None,
                   help='with --train: fp32 (default), bf16 (autocast around forward and loss) or fp32,bf16 (both)')
    p.add_argument('--channels-last', nargs='?', const='on', default=None, choices=('off', 'on', 'both'),
                   help='with --train: models and images in torch.channels_last (on), or NCHW and it (both)')


def _batch_sizes(text: str) -> List[int]:
    try:
        sizes = [int(s) for s in text.split(',') if s.strip()]
    except ValueError:
        raise ValueError(f'--batch-sizes must be comma-separated integers, got {text!r}') from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f'--batch-sizes must be positive integers, got {text!r}')
    return sizes


def run_bench(args) -> List[Dict]:
    check_positive(threads=args.threads, repeats=args.repeats, image_size=args.image_size)
    check_device(args.device)
    check_output_file(args.json, '--json')
    if not args.train and (args.precision or args.channels_last):
        raise ValueError('--precision and --channels-last time training steps: add --train')
    layouts = {'both': LAYOUTS, 'on': LAYOUTS[1:]}.get(args.channels_last, LAYOUTS[:1])
    settings = train_settings((args.precision or 'fp32').split(','), layouts)
    allocator_tuned = tune_cpu_allocator() if args.device == 'cpu' else False
    if args.threads:
        torch.set_num_threads(args.threads)
    # untrained weights unless a checkpoint or file is given: timings do not depend on them
    model = as_blockdrop(load_model(args.model, args.checkpoint, args.pretrained_file,
                                    pretrained=bool(args.checkpoint or args.pretrained_file), require='wrappable'))
    if args.train:
        results = [r for b in _batch_sizes(args.batch_sizes)
                   for r in measure_train_settings(model, settings, batch_size=b, rounds=args.repeats,
                                                   device=args.device, seed=args.seed,
                                                   finetune_mode=args.finetune_mode)]
        for r in results:
            print(f"{r['model']} batch {r['batch_size']} {r['precision']} {r['layout']}: images/s plain "
                  f"{r['plain_ips']:.1f}, curriculum "
                  f"{r['curriculum_ips']:.1f} ({r['curriculum_ratio']:.2f}x), finetune ({r['finetune_mode']}) "
                  f"{r['finetune_ips']:.1f} ({r['finetune_ratio']:.2f}x)")
    else:
        results = bench_inference(
            model, _batch_sizes(args.batch_sizes), args.policy, args.keep, args.image_size, args.repeats,
            args.device, args.seed)
        print(format_results(results))
    if args.json:
        out = {
            'results': results,
            'environment': dict(torch=torch.__version__, threads=torch.get_num_threads(), device=args.device,
                                cpu_allocator_tuned=allocator_tuned,
                                machine=platform.machine(), processor=platform.processor() or None),
        }
        write_json(args.json, out)
    return results
