"""Running residual blocks under a keep mask (paper Sec. 3.2: only the kept blocks are evaluated).

The one routing mechanism of the package. A dropped block passes its input through the block's shortcut:
``downsample(x)`` if the block has one, ``x`` otherwise (y_{i+1} = y_i, Sec. 3.1) -- never zeros.

What a block computes is a ``BlockKernels``: ``full(x)`` (the block) and ``shortcut(x)`` (what dropping it
gives). ``BlockKernels`` calls the block's own modules; the fused engine (``fused.py``) passes kernels that
call folded oneDNN convolutions instead. Everything else -- which rows run which block -- lives here:

- masked: every block runs on the whole batch and the output mixes block and shortcut by keep; it is
  differentiable in keep (straight-through training) and the reference the routed mode is tested against.
- routed: each block runs only on the rows that keep it; rows that drop it take the shortcut. All routing
  decisions are read from ``keep`` once per batch (one host sync), not per block.
- paired: two policies at once, each row computed once for as long as its two policies agree (training).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ['residual_stages', 'shortcut', 'BlockKernels', 'masked_block', 'Routing', 'routed_block',
           'run_blocks', 'paired_logits', 'nonfinite_rows', 'keep_nonfinite']


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


class BlockKernels:
    """The computations of one residual block: ``full(x)`` runs it, ``shortcut(x)`` is what dropping it gives.

    This one calls the block's own modules (so it always sees the block's current weights).
    """

    def __init__(self, block: nn.Module):
        self.module = block
        self.identity = getattr(block, 'downsample', None) is None

    def full(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return shortcut(self.module, x)


def _masked(kernels: BlockKernels, x: torch.Tensor, keep_col: torch.Tensor) -> torch.Tensor:
    y = kernels.full(x)
    s = kernels.shortcut(x)
    k = keep_col.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    return s + k * (y - s)


def masked_block(kernels: BlockKernels, x: torch.Tensor, keep_col: torch.Tensor, grad_checkpoint: bool = False):
    """keep * block(x) + (1 - keep) * shortcut(x), for a (B,) keep column."""
    if grad_checkpoint and torch.is_grad_enabled():
        return checkpoint(_masked, kernels, x, keep_col, use_reentrant=False)
    return _masked(kernels, x, keep_col)


class Routing:
    """Which rows run which block, read once from a (B, K) keep tensor.

    For each block k, ``plan[k]`` is ``'all'``, ``'none'`` or a pair of index tensors (kept rows, dropped rows)
    on ``device``.
    """

    def __init__(self, keep: torch.Tensor, device: Optional[torch.device] = None):
        keep_cpu = keep.detach().to('cpu') != 0
        batch = keep_cpu.shape[0]
        if batch == 1:  # one image: each block runs or not (a third of the general plan's time)
            self.plan = ['all' if v else 'none' for v in keep_cpu[0].tolist()]
            return
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


def _differentiable(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels_last tensor as an (N, row) matrix view: row n is sample n, one contiguous slice.

    The row is viewed as 16-byte elements where its size allows: PyTorch's row gather/scatter kernels cost
    per element, so copying the same bytes as complex128 is about 3x faster than as float32 (bit-exact).
    """
    flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    if (flat.shape[1] * flat.element_size()) % 16 == 0:
        return flat.view(torch.complex128)
    return flat


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of x (a plain memory copy per row for channels_last tensors without autograd)."""
    if not _channels_last(x) or _differentiable(x):
        return x.index_select(0, idx)
    n, c, h, w = x.shape
    return _rows(x).index_select(0, idx).view(x.dtype).view(len(idx), h, w, c).permute(0, 3, 1, 2)


def scatter_(out: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """out[idx] = rows, in place."""
    if _channels_last(out) and _channels_last(rows) and not _differentiable(out, rows):
        _rows(out).index_copy_(0, idx, _rows(rows))
    else:
        out.index_copy_(0, idx, rows)
    return out


def routed_block(kernels: BlockKernels, x: torch.Tensor, route, owned: bool = False) -> torch.Tensor:
    """Run the block on the rows that keep it and the shortcut on the others (gather, run, scatter).

    ``owned``: ``x`` is a buffer of the caller's that no one else reads (and no autograd saved): an identity
    block's kept rows are then written back into it in place; the dropped rows are not touched at all.
    """
    if isinstance(route, str):
        return kernels.full(x) if route == 'all' else kernels.shortcut(x)
    kept, dropped = route
    y = kernels.full(gather(x, kept))
    if kernels.identity and owned and not _differentiable(x, y):
        return scatter_(x, kept, y)
    s = kernels.shortcut(gather(x, dropped))
    fmt = torch.channels_last if _channels_last(y) else torch.contiguous_format
    out = torch.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype, device=y.device, memory_format=fmt)
    return scatter_(scatter_(out, kept, y), dropped, s)


def run_blocks(
        kernels: Sequence[BlockKernels], x: torch.Tensor, keep: torch.Tensor, routing: Optional[Routing],
        start: int = 0, end: Optional[int] = None, grad_checkpoint: bool = False, owned: bool = False,
) -> torch.Tensor:
    """Blocks ``start .. end-1`` on ``x``: routed under ``routing`` when given, else masked by ``keep``."""
    end = len(kernels) if end is None else end
    for k in range(start, end):
        if routing is not None:
            y = routed_block(kernels[k], x, routing[k], owned)
            owned = owned or y is not x  # a block's own output is ours to write into
            x = y
        else:
            x = masked_block(kernels[k], x, keep[:, k], grad_checkpoint)
    return x


def paired_logits(model, images: torch.Tensor, keep_a: torch.Tensor, keep_b: torch.Tensor):
    """Logits of ``model`` under two (B, K) policies, each row computed once until the two policies differ.

    Row i of both passes is the same computation up to the first block where ``keep_a[i]`` and ``keep_b[i]``
    disagree (e.g. the curriculum's forced prefix); only from there on does row i of ``keep_b`` get activations of
    its own. Blocks run routed (each on the rows that keep it). For no-grad passes with the ResNet in eval mode
    (curriculum learning); in train mode BatchNorm statistics would depend on how the rows are batched.
    ``model`` answers ``forward_stem``, ``kernels()``, ``forward_head`` and ``num_blocks`` (a BlockDropResNet or
    its fused copy).
    """
    a = keep_a.detach().to('cpu') != 0
    b = keep_b.detach().to('cpu') != 0
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] != model.num_blocks:
        raise ValueError(f'keep_a and keep_b must both have shape (B, K={model.num_blocks}), '
                         f'got {tuple(a.shape)} and {tuple(b.shape)}')
    batch, num_blocks = a.shape
    differs = a != b
    first = torch.where(differs.any(1), differs.int().argmax(1), torch.full((batch,), num_blocks))
    h = model.forward_stem(images)
    own_b = torch.empty(0, dtype=torch.long)  # rows of keep_b that have their own activations, in hb's order
    hb = h[:0]
    for k, kernels in enumerate(model.kernels()):
        new = (first == k).nonzero().flatten()
        if new.numel():
            hb = torch.cat([hb, h.index_select(0, new.to(h.device))])
            own_b = torch.cat([own_b, new])
        column = torch.cat([a[:, k], b[own_b, k]])
        both = torch.cat([h, hb]) if own_b.numel() else h
        both = routed_block(kernels, both, Routing(column[:, None], device=h.device)[0])
        h, hb = both[:batch], both[batch:]
    logits = model.forward_head(torch.cat([h, hb]) if own_b.numel() else h)
    logits_a = logits[:batch]
    logits_b = logits_a.clone()
    if own_b.numel():
        logits_b[own_b.to(logits.device)] = logits[batch:]
    return logits_a, logits_b


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows of ``x`` that hold a NaN or Inf. ``x * 0`` is NaN exactly there (0 elsewhere, in any
    float dtype), so its row sums find them in two kernels, a third of ``isfinite``'s time at batch 1, with no
    host sync."""
    return (x * 0).sum(tuple(range(1, x.dim()))).isnan()


def keep_nonfinite(x: torch.Tensor, out: torch.Tensor, bad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out`` with NaN in every row whose input row ``x`` holds a NaN or Inf, as plain timm gives (``bad``: those
    rows, when the caller has them from ``nonfinite_rows`` already).

    Routing can lose a non-finite pixel (a dropped block's strided shortcut may skip it; a fused ReLU maps NaN
    to 0), so the rows are marked from the input instead of trusting the arithmetic.
    """
    bad = nonfinite_rows(x) if bad is None else bad
    return out.masked_fill(bad.to(out.device).view(-1, *([1] * (out.dim() - 1))), float('nan'))
