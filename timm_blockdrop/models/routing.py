"""Running residual blocks under a keep mask (paper Sec. 3.2: only the kept blocks are evaluated).

A dropped block passes its input through the block's shortcut: ``downsample(x)`` if the block has one,
``x`` otherwise (y_{i+1} = y_i, Sec. 3.1) -- never zeros.

Two execution modes give the same numbers:
- masked: every block runs on the whole batch and the output mixes block and shortcut by keep; it is
  differentiable in keep (straight-through training) and the reference the routed mode is tested against.
- routed: each block runs only on the rows that keep it; rows that drop it take the shortcut. All routing
  decisions are read from ``keep`` once per batch (one host sync), not per block.
"""
from typing import List, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ['residual_stages', 'shortcut', 'masked_block', 'Routing', 'routed_block']


def residual_stages(net: nn.Module) -> List[nn.Sequential]:
    """The residual stages ``layer1 .. layerN`` of a timm-style ResNet, in order (empty for other models)."""
    stages, i = [], 1
    while isinstance(getattr(net, f'layer{i}', None), nn.Sequential):
        stages.append(getattr(net, f'layer{i}'))
        i += 1
    return stages


def shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a dropped block outputs: its downsample applied to x, or x itself."""
    downsample = getattr(block, 'downsample', None)
    return x if downsample is None else downsample(x)


def _masked(block: nn.Module, x: torch.Tensor, keep_col: torch.Tensor) -> torch.Tensor:
    y = block(x)
    s = shortcut(block, x)
    k = keep_col.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    return s + k * (y - s)


def masked_block(block: nn.Module, x: torch.Tensor, keep_col: torch.Tensor, grad_checkpoint: bool = False):
    """keep * block(x) + (1 - keep) * shortcut(x), for a (B,) keep column."""
    if grad_checkpoint and torch.is_grad_enabled():
        return checkpoint(_masked, block, x, keep_col, use_reentrant=False)
    return _masked(block, x, keep_col)


class Routing:
    """Which rows run which block, read once from a (B, K) keep tensor.

    For each block k, ``plan[k]`` is ``'all'``, ``'none'`` or a pair of index tensors (kept rows, dropped rows)
    on ``device``.
    """

    def __init__(self, keep: torch.Tensor, device: Optional[torch.device] = None):
        keep_cpu = keep.detach().to('cpu') != 0
        batch = keep_cpu.shape[0]
        counts = keep_cpu.sum(0).tolist()
        device = device if device is not None else keep.device
        rows = torch.arange(batch)
        self.plan: List = []
        for k, c in enumerate(counts):
            if c == batch:
                self.plan.append('all')
            elif c == 0:
                self.plan.append('none')
            else:
                col = keep_cpu[:, k]
                self.plan.append((rows[col].to(device), rows[~col].to(device)))

    def __getitem__(self, k: int):
        return self.plan[k]

    def __len__(self) -> int:
        return len(self.plan)


def routed_block(block: nn.Module, x: torch.Tensor, route) -> torch.Tensor:
    """Run ``block`` on the rows that keep it and the shortcut on the others (gather, run, scatter)."""
    if isinstance(route, str):
        return block(x) if route == 'all' else shortcut(block, x)
    kept, dropped = route
    y = block(x.index_select(0, kept))
    s = shortcut(block, x.index_select(0, dropped))
    out = y.new_empty((x.shape[0], *y.shape[1:]))
    out.index_copy_(0, kept, y)
    out.index_copy_(0, dropped, s)
    return out
