"""Training throughput: a curriculum step and a joint-finetune step against plain cross-entropy finetuning.

``measure_train_throughput`` times, on the same machine and in the same run, one optimizer step of
- plain: the base ResNet alone, cross-entropy, forward + backward + Adam (what finetuning a timm model costs);
- curriculum: ``CurriculumRollout`` + ``curriculum_loss`` at the costliest stage, the policy deciding all K blocks
  (no forced prefix); policy forward + backward, the frozen ResNet run under the sampled and the greedy policy
  (shared rows, routed);
- finetune: ``FinetuneRollout``, cross-entropy + ``policy_gradient_loss``, policy and ResNet trained together
  (sampled pass with gradient, greedy pass not).
The three are timed in interleaved rounds (plain, curriculum, finetune, plain, ...) and each reports its median
round, so a machine whose load changes during the run biases none of them. Inputs are random tensors of the
model's input size: images/s does not depend on what the pixels show, only on how many blocks the (fresh)
policy keeps, about half.

Each setting is a precision (fp32, or bf16: ``torch.autocast`` around forward and loss, what Accelerate's
``--mixed_precision bf16`` does on CPU) and a layout (nchw, or channels_last: models and images in
``torch.channels_last``, timm's ``--channels-last``). ``measure_train_settings`` times several settings in the same
interleaved rounds, so their ratios are not skewed by a load that changes between them.
"""
import copy
import itertools
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.loading import as_blockdrop, load_model
from ..train.reinforce import (CurriculumRollout, FinetuneRollout, curriculum_loss, policy_gradient_loss,
                               rewards)

__all__ = ['measure_train_throughput', 'measure_train_settings', 'train_settings', 'PRECISIONS', 'LAYOUTS']

PRECISIONS = ('fp32', 'bf16')
LAYOUTS = ('nchw', 'channels_last')


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_settings(precisions: Sequence[str], layouts: Sequence[str]) -> List[Tuple[str, str]]:
    """Every (precision, layout) pair, each value checked: a bad one is refused in one sentence."""
    for flag, values, known in (('--precision', precisions, PRECISIONS), ('layout', layouts, LAYOUTS)):
        bad = [v for v in values if v not in known]
        if bad or not values:
            raise ValueError(f"{flag} must be one or more of {', '.join(known)} (comma-separated), got "
                             f"{','.join(values)!r}")
    return list(itertools.product(dict.fromkeys(precisions), dict.fromkeys(layouts)))


def measure_train_throughput(
        model_name_or_model: Union[str, nn.Module],
        *,
        precision: str = 'fp32',
        channels_last: bool = False,
        **kwargs,
) -> Dict[str, float]:
    """Images/s of a plain, a curriculum and a finetune training step of the same model, side by side.

    Args:
        model_name_or_model: a timm name (a base ResNet such as ``cifar_resnet32``, wrapped with a fresh policy,
            or a ``blockdrop_*`` model) or a model.
        precision: 'fp32' or 'bf16' (autocast around forward and loss).
        channels_last: models and images in ``torch.channels_last`` (layout 'channels_last', else 'nchw').
        kwargs: the other arguments of ``measure_train_settings``, by keyword, among them:
            batch_size: images per step.
            steps: timed steps per round and kind; ``warmup`` untimed steps per kind before the first round.
            rounds: interleaved rounds; each kind reports its median round.
            finetune_mode: how the finetune step runs the blocks: 'masked' (the reference, and the recipes'
                default) or 'routed' (only the rows that keep a block run it; BatchNorm then sees only those
                rows).
    Returns:
        dict(model, batch_size, device, num_blocks, threads, steps, rounds, finetune_mode, precision, layout,
        plain_ips, curriculum_ips, finetune_ips, curriculum_ratio, finetune_ratio), the ratios relative to plain_ips.
    """
    layout = LAYOUTS[1] if channels_last else LAYOUTS[0]
    return measure_train_settings(model_name_or_model, [(precision, layout)], **kwargs)[0]


def measure_train_settings(
        model_name_or_model: Union[str, nn.Module],
        settings: Sequence[Tuple[str, str]] = (('fp32', 'nchw'),),
        batch_size: int = 128,
        steps: int = 5,
        warmup: int = 2,
        rounds: int = 3,
        device: str = 'cpu',
        pretrained_file: Optional[str] = None,
        gamma: float = 5.0,
        seed: int = 0,
        finetune_mode: str = 'masked',
) -> List[Dict[str, float]]:
    """``measure_train_throughput`` for each (precision, layout) of ``settings``, all timed in the same
    interleaved rounds; one result per setting, in order."""
    if batch_size < 1 or steps < 1 or rounds < 1 or warmup < 0:
        raise ValueError('batch_size, steps and rounds must be >= 1 and warmup >= 0')
    train_settings([p for p, _ in settings], [layout for _, layout in settings])
    device = torch.device(device)
    torch.manual_seed(seed)
    if isinstance(model_name_or_model, nn.Module):
        model = as_blockdrop(model_name_or_model)
    else:  # fresh weights unless a file is given: images/s does not depend on them
        model = as_blockdrop(load_model(model_name_or_model, pretrained_file=pretrained_file,
                                        pretrained=bool(pretrained_file), require='wrappable'))
    cfg = model.pretrained_cfg
    images = torch.randn(batch_size, *cfg.get('input_size', (3, 224, 224)), device=device)
    labels = torch.randint(0, model.num_classes, (batch_size,), device=device)
    kinds = {}
    for precision, layout in settings:
        for kind, fn in _train_steps(model, images, labels, gamma, finetune_mode, device, precision, layout).items():
            kinds[precision, layout, kind] = fn
    for fn in kinds.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in kinds}
    for _ in range(rounds):
        for key, fn in kinds.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    results = []
    for precision, layout in settings:
        ips = {k: batch_size * steps / statistics.median(times[precision, layout, k])
               for k in ('plain', 'curriculum', 'finetune')}
        results.append(dict(
            model=cfg.get('architecture'), batch_size=batch_size, device=str(device), num_blocks=model.num_blocks,
            threads=torch.get_num_threads(), steps=steps, rounds=rounds, finetune_mode=finetune_mode,
            precision=precision, layout=layout,
            plain_ips=ips['plain'], curriculum_ips=ips['curriculum'], finetune_ips=ips['finetune'],
            curriculum_ratio=ips['curriculum'] / ips['plain'], finetune_ratio=ips['finetune'] / ips['plain'],
        ))
    return results


def _train_steps(model, images, labels, gamma, finetune_mode, device, precision, layout):
    """The three training steps of one setting, each on its own copy of the model (and optimizer)."""
    memory_format = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)
    batch_size = images.shape[0]
    seeds = torch.arange(batch_size)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')

    plain = copy.deepcopy(model.base).to(device, memory_format=memory_format).train()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)
    cl_model = copy.deepcopy(model).to(device, memory_format=memory_format)
    cl_rollout = CurriculumRollout(cl_model).train()
    cl_opt = torch.optim.Adam(cl_model.policy.parameters(), lr=1e-4)
    ft_model = copy.deepcopy(model).to(device, memory_format=memory_format)
    ft_rollout = FinetuneRollout(ft_model, mode=finetune_mode).train()
    ft_opt = torch.optim.Adam(ft_model.parameters(), lr=1e-4)

    def run_plain():
        with autocast():
            loss = F.cross_entropy(plain(images), labels)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def run_curriculum():
        with autocast():
            out = cl_rollout(images, seeds, n_forced=0)  # the costliest stage: all K blocks decided
            _, _, adv = rewards(out, labels, gamma)
            loss = curriculum_loss(out['probs'], out['keep'], adv, n_forced=0)
        cl_opt.zero_grad(set_to_none=True)
        loss.backward()
        cl_opt.step()

    def run_finetune():
        with autocast():
            out = ft_rollout(images, seeds)
            _, _, adv = rewards(out, labels, gamma)
            loss = F.cross_entropy(out['logits'], labels) + policy_gradient_loss(out['probs'], out['keep'], adv,
                                                                                weight=batch_size)
        ft_opt.zero_grad(set_to_none=True)
        loss.backward()
        ft_opt.step()

    return {'plain': run_plain, 'curriculum': run_curriculum, 'finetune': run_finetune}
