"""The BlockDrop reward (paper Eq. 3) and the self-critical advantage (Eq. 6).

A policy u in {0,1}^K that leads the ResNet to a correct prediction earns 1 - (|u|_0 / K)^2: the fewer blocks
it keeps, the more. A wrong prediction earns -gamma, whatever the blocks. The policy gradient (Eq. 6) weights
log pi(u|x) by the advantage A = R(u) - R(u~), where u~ is the greedy policy (s >= 0.5) of the same network:
the self-critical baseline.
"""
import math

import torch

__all__ = ['check_gamma', 'block_usage', 'reward', 'advantage']


def check_gamma(gamma: float) -> float:
    """gamma is the penalty of a wrong prediction (its reward is -gamma, Eq. 3): a number >= 0."""
    try:
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f'gamma must be a number >= 0 (the penalty of a wrong prediction), got {gamma!r}') from None
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(
            f'gamma is the penalty of a wrong prediction (its reward is -gamma, paper Eq. 3) and must be >= 0, '
            f'got {gamma} (the reference code\'s "--penalty -5" is gamma = 5)')
    return gamma


def block_usage(keep: torch.Tensor) -> torch.Tensor:
    """|u|_0 / K for each row of a (B, K) 0/1 policy: the fraction of blocks it runs (float32)."""
    if keep.dim() != 2:
        raise ValueError(f'keep must be a (B, K) policy, got shape {tuple(keep.shape)}')
    return keep.detach().float().sum(1) / keep.shape[1]


def reward(keep: torch.Tensor, correct: torch.Tensor, gamma: float) -> torch.Tensor:
    """R(u) of Eq. 3 for each row: 1 - (|u|_0 / K)^2 where the prediction is correct, -gamma where it is wrong.

    Args:
        keep: (B, K) policy u that produced the predictions (0 drops a block, 1 runs it).
        correct: (B,) bool, whether the ResNet run under u predicted the label.
        gamma: the penalty (>= 0) of a wrong prediction.
    Returns:
        (B,) float32 rewards, not differentiable.
    """
    gamma = check_gamma(gamma)
    usage = block_usage(keep)
    if correct.shape != usage.shape:
        raise ValueError(f'correct must have shape {tuple(usage.shape)} (one per row of keep), '
                         f'got {tuple(correct.shape)}')
    return torch.where(correct.to(usage.device).bool(), 1.0 - usage ** 2, torch.full_like(usage, -gamma))


def advantage(reward_sampled: torch.Tensor, reward_greedy: torch.Tensor) -> torch.Tensor:
    """A = R(u) - R(u~) of Eq. 6: the sampled policy's reward minus that of the greedy baseline (detached)."""
    return (reward_sampled - reward_greedy).detach()
