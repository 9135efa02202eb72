"""Exact FLOPs of a gated ResNet, counted as the paper does (Sec. 4.2, footnote 3).

2 x multiply-adds of convolution and linear layers, per image (batch 1); BN, activations, pooling and the
parameter-free shortcut cost nothing. Counting is done once per input size with PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` on each part of the network; a policy's cost is then linear:

    flops(keep) = fixed (stem + head [+ policy]) + sum_k keep_k * block_k + (1 - keep_k) * shortcut_k

where a dropped block still pays for its downsample projection if it has one.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .routing import shortcut

__all__ = ['count_flops', 'BlockFlops', 'block_flops_table', 'frozen_eval']


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration, restoring every submodule's own train/eval flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


def count_flops(fn: Callable, *args) -> Tuple[int, object]:
    """FLOPs (2 x MACs of conv/linear) of ``fn(*args)`` and its output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops(), out


@dataclass(frozen=True)
class BlockFlops:
    """Per-image FLOPs of the parts of a ResNet at one input size."""
    stem: int
    head: int
    blocks: Tuple[int, ...]      # cost of running block k (its downsample included)
    shortcuts: Tuple[int, ...]   # cost of dropping block k (its downsample, 0 for identity shortcuts)

    @property
    def full(self) -> int:
        """FLOPs of the plain network with every block kept."""
        return self.stem + self.head + sum(self.blocks)

    def cost(self, keep: torch.Tensor) -> torch.Tensor:
        """Per-row FLOPs (float64, on CPU) of a (B, K) keep tensor, without any policy network."""
        keep = keep.detach().to('cpu', torch.float64)
        blocks = torch.tensor(self.blocks, dtype=torch.float64)
        shortcuts = torch.tensor(self.shortcuts, dtype=torch.float64)
        return self.stem + self.head + shortcuts.sum() + keep @ (blocks - shortcuts)


def block_flops_table(
        stem: Callable[[torch.Tensor], torch.Tensor],
        blocks: Sequence[nn.Module],
        head: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
) -> BlockFlops:
    """Count stem, each block, each block's shortcut and the head on a batch-1 input ``x``."""
    assert x.shape[0] == 1, 'FLOPs are counted per image: pass a batch of one'
    stem_flops, x = count_flops(stem, x)
    block_flops, shortcut_flops = [], []
    for block in blocks:
        f_short, _ = count_flops(shortcut, block, x)
        f_block, x = count_flops(block, x)
        block_flops.append(f_block)
        shortcut_flops.append(f_short)
    head_flops, _ = count_flops(head, x)
    return BlockFlops(stem_flops, head_flops, tuple(block_flops), tuple(shortcut_flops))
