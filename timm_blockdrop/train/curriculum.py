"""Curriculum learning (paper Sec. 3.3, Alg. 1 lines 6-8): which blocks the policy decides at epoch t.

During epoch t (1 <= t < K) the first K - t blocks always run and the policy learns to keep or drop only the
last t; from t >= K on it decides all K. With ``cl_step`` blocks added per epoch (the reference code's
``--cl_step``, 1 in the paper) and 0-based epochs e = t - 1, epoch e leaves the last
min(K, (e + 1) * cl_step) blocks to the policy and forces the others on, in the sampled and the greedy policy
alike.
"""
import math

import torch

__all__ = ['check_cl_step', 'num_decided', 'num_forced', 'decided_mask', 'force_prefix', 'first_full_epoch']


def check_cl_step(cl_step: int) -> int:
    if isinstance(cl_step, bool) or int(cl_step) != cl_step or cl_step < 1:
        raise ValueError(f'cl_step (blocks added to the policy per curriculum epoch) must be an integer >= 1, '
                         f'got {cl_step!r}')
    return int(cl_step)


def num_decided(epoch: int, num_blocks: int, cl_step: int = 1) -> int:
    """How many of the last blocks the policy decides during 0-based ``epoch``: min(K, (epoch + 1) * cl_step)."""
    if int(epoch) != epoch or epoch < 0:
        raise ValueError(f'epoch must be an integer >= 0 (0-based), got {epoch!r}')
    if num_blocks < 1:
        raise ValueError(f'num_blocks must be >= 1, got {num_blocks}')
    return min(num_blocks, (int(epoch) + 1) * check_cl_step(cl_step))


def num_forced(epoch: int, num_blocks: int, cl_step: int = 1) -> int:
    """How many of the first blocks always run during 0-based ``epoch``: K - num_decided."""
    return num_blocks - num_decided(epoch, num_blocks, cl_step)


def decided_mask(n_forced: int, num_blocks: int, device=None) -> torch.Tensor:
    """(K,) bool: True for the blocks the policy decides (k >= n_forced), False for the forced prefix."""
    if not 0 <= n_forced <= num_blocks:
        raise ValueError(f'n_forced must lie in [0, K] = [0, {num_blocks}], got {n_forced}')
    return torch.arange(num_blocks, device=device) >= n_forced


def force_prefix(keep: torch.Tensor, n_forced: int) -> torch.Tensor:
    """A copy of the (B, K) policy with its first ``n_forced`` blocks kept (Alg. 1 line 7)."""
    if not 0 <= n_forced <= keep.shape[1]:
        raise ValueError(f'n_forced must lie in [0, K] = [0, {keep.shape[1]}], got {n_forced}')
    keep = keep.clone()
    keep[:, :n_forced] = 1
    return keep


def first_full_epoch(num_blocks: int, cl_step: int = 1) -> int:
    """The first 0-based epoch in which the policy decides all K blocks: ceil(K / cl_step) - 1."""
    return math.ceil(num_blocks / check_cl_step(cl_step)) - 1
