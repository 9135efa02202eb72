"""The paper's evaluation report (Table 1/3): top-1, block usage, FLOPs per image, unique policies.

``evaluate_policy`` runs a BlockDrop model over a data loader under its learned (greedy) policy or a
heuristic baseline (Sec. 4.2) and returns the report as a JSON-ready dict. Top-1 goes through the
``evaluate`` library with the metric vendored in ``timm_blockdrop/tools/metrics/accuracy`` (works offline).
"""
import time
from pathlib import Path
from typing import Dict, Optional

import evaluate
import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.blockdrop import BlockDropResNet
from ..models.policies import HEURISTICS, heuristic_policy

__all__ = ['ACCURACY_METRIC', 'load_accuracy_metric', 'evaluate_policy', 'format_report', 'POLICIES']

ACCURACY_METRIC = Path(__file__).parent / 'metrics' / 'accuracy'
POLICIES = ('learned',) + tuple(HEURISTICS)


def load_accuracy_metric():
    """The vendored ``accuracy`` metric of the ``evaluate`` library (no Hub download)."""
    return evaluate.load(str(ACCURACY_METRIC))


def evaluate_policy(
        model: BlockDropResNet,
        loader,
        policy: str = 'learned',
        blocks: Optional[int] = None,
        seed: int = 0,
        device: str = 'cpu',
        progress: bool = True,
        compare_full: bool = False,
) -> Dict:
    """Evaluate ``model`` on ``loader`` (batches of (images, labels)) under ``policy``.

    ``learned`` uses the policy network's greedy policy (its FLOPs counted); the heuristics ``full``, ``firstk``,
    ``randomk`` and ``distributek`` keep ``blocks`` blocks without running the policy network (not counted).

    ``images_per_s`` times the forward passes only (policy net included), not the data loading, and leaves out
    the first batch (warm-up) when there are several. ``compare_full`` also times, on the same batches and
    interleaved with it, the full base ResNet as plain timm runs it (``full_timm``) and with the fused inference
    engine (``full_fast``, CPU only), and reports BlockDrop's speed-up over each.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy '{policy}': choose one of {', '.join(POLICIES)}")
    if policy in ('firstk', 'randomk', 'distributek'):
        heuristic_policy(policy, 1, model.num_blocks, blocks, model.stage_sizes)  # validates k early
    elif blocks is not None:
        what = ('decides the blocks of each image (move its threshold with --threshold)' if policy == 'learned'
                else f'keeps all {model.num_blocks} blocks')
        raise ValueError(f'--blocks {blocks} applies to firstk, randomk and distributek only: the {policy} policy '
                         f'{what}')
    generator = torch.Generator().manual_seed(seed)
    metric = load_accuracy_metric()
    model.eval().to(device)
    n_blocks, flops, labels, rows = [], [], [], []
    n_images = 0
    timed = {'blockdrop': [0.0, 0]}  # variant -> [seconds, images], batches after the first
    if compare_full:
        timed['full_timm'] = [0.0, 0]
        if torch.device(device).type == 'cpu':
            timed['full_fast'] = [0.0, 0]
    img_size = None
    fused = model.fuse()  # explicit: a frozen, fused inference copy of the model as it is now

    def blockdrop(images):
        if policy == 'learned':  # the model's own forward (a policy on the stem shares its output)
            logits, keep = fused.forward_and_policy(images)
            return keep, logits.argmax(dim=1).cpu()
        keep = heuristic_policy(policy, images.shape[0], model.num_blocks, blocks, model.stage_sizes,
                                generator).to(device)
        return keep, fused.forward_with_policy(images, keep).argmax(dim=1).cpu()

    variants = {'blockdrop': blockdrop, 'full_timm': model.base, 'full_fast': fused.forward_full}

    def run_variants(images, timing: bool, batch: int = 0):
        """Every timed variant on ``images`` in turn (seconds added where ``timing``); BlockDrop's (keep, preds).

        The order rotates from batch to batch: the variant that runs first after the data loading finds the caches
        cold, and none should always be it."""
        names = list(timed)
        k = batch % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            out = variants[name](images)
            if timing:
                timed[name][0] += time.perf_counter() - start
                timed[name][1] += images.shape[0]
            if name == 'blockdrop':
                result = out
        return result

    with torch.inference_mode():
        for i, (images, targets) in enumerate(tqdm(loader, desc=f'eval {policy}', disable=not progress,
                                                   leave=False)):
            images = images.to(device)
            if img_size is None:
                img_size = tuple(images.shape[-2:])
            # the first batch warms up (engine build, allocator, oneDNN primitives) untimed; the later ones time
            # the variants side by side on the same batch
            keep, preds = run_variants(images, timing=i > 0, batch=i)
            n_images += images.shape[0]
            metric.add_batch(predictions=preds, references=targets)
            keep = keep.cpu().bool()
            n_blocks.append(keep.sum(1))
            flops.append(model.flops(keep, include_policy=policy == 'learned', img_size=img_size))
            labels.append(targets)
            rows.append(keep)
        if n_images and timed['blockdrop'][1] == 0:  # a single batch: time it again, now warm
            run_variants(images, timing=True)
    if n_images == 0:
        raise ValueError('the dataset split is empty: nothing to evaluate')
    speed = {name: n / sec for name, (sec, n) in timed.items()}
    top1 = metric.compute()['accuracy']
    n_blocks = torch.cat(n_blocks).double()
    flops = torch.cat(flops)
    labels = torch.cat(labels)
    keep = torch.cat(rows)
    unique = len({r.tobytes() for r in np.packbits(keep.numpy(), axis=1)})
    classes = labels.unique()
    per_class = {int(c): round(float(n_blocks[labels == c].mean()), 4) for c in classes}
    per_class_keep = {int(c): [round(float(v), 6) for v in keep[labels == c].double().mean(0)] for c in classes}
    report = {
        'model': model.pretrained_cfg.get('architecture'),
        'base_model': model._model_args.get('base_model'),
        'image_size': list(img_size),
        'policy': policy,
        'blocks': blocks if policy != 'learned' else None,
        'threshold': model.threshold if policy == 'learned' else None,
        'num_blocks': model.num_blocks,
        'n_images': n_images,
        'top1': 100.0 * top1,
        'blocks_mean': float(n_blocks.mean()),
        'blocks_std': float(n_blocks.std(unbiased=False)),
        'flops_mean': float(flops.mean()),
        'flops_std': float(flops.std(unbiased=False)),
        'full_flops': float(model.flops_table(img_size)[0].full),
        'unique_policies': unique,
        'images_per_s': speed['blockdrop'],
        'block_keep_rate': [round(float(v), 6) for v in keep.double().mean(0)],
        'blocks_hist': torch.bincount(keep.sum(1), minlength=model.num_blocks + 1).tolist(),
        'per_class_blocks_mean': per_class,
        'per_class_block_keep_rate': per_class_keep,
    }
    if len(speed) > 1:  # timed against the full model: the conditions of the timing
        report.update(batch_size=getattr(loader, 'batch_size', None), threads=torch.get_num_threads(),
                      device=str(device))
    for name in ('full_timm', 'full_fast'):
        if name in speed:
            report[f'{name}_images_per_s'] = speed[name]
            report[f'speedup_vs_{name}'] = speed['blockdrop'] / speed[name]
    return report


def format_report(r: Dict) -> str:
    """The paper's one-line-per-figure report."""
    what = r['policy'] if r['policy'] in ('learned', 'full') else f"{r['policy']} (k={r['blocks']})"
    if r['policy'] == 'learned':
        what += f" (threshold {r['threshold']})"
    return '\n'.join([
        f"model            {r['model']}  policy: {what}",
        f"images           {r['n_images']}",
        f"top-1            {r['top1']:.2f} %",
        f"blocks           {r['blocks_mean']:.1f} ± {r['blocks_std']:.1f} of {r['num_blocks']}",
        f"FLOPs/img        {r['flops_mean']:.2E} ± {r['flops_std']:.2E}  (full model {r['full_flops']:.2E})",
        f"unique policies  {r['unique_policies']}",
        f"images/s         {r['images_per_s']:.1f}  (forward passes only, batches after the first)",
    ] + [f"vs {name:<13} {r[f'{name}_images_per_s']:.1f} images/s: speed-up {r[f'speedup_vs_{name}']:.2f}x"
         for name in ('full_timm', 'full_fast') if f'speedup_vs_{name}' in r])
