"""The learning-rate schedule of a run: linear warmup, then cosine to ``min_lr`` or steps at ``decay_epochs``."""
import math

import torch

from .config import TrainConfig

__all__ = ['lr_scheduler']


def lr_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """LambdaLR over optimizer steps: linear warmup, then cosine to ``min_lr`` or steps at ``decay_epochs``.

    The factor is a closure of the config (not saved in the scheduler's state), so a resumed run recomputes it
    and only its step count comes from the checkpoint.
    """
    # kept instead of timm.scheduler: its lr_min is one absolute floor for every parameter group (policy_lr would
    # stop decaying at min_lr), and its state would not load from the checkpoints of existing runs
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    milestones = sorted(int(round(e * steps_per_epoch)) for e in config.decay_epochs)
    floor = config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == 'step':
            return config.decay_ratio ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
