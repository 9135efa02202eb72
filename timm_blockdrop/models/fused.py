"""Fast inference for BlockDrop on CPU: fused convolutions and per-sample routing without waste.

Paper Sec. 3.2 promises that only the kept blocks are evaluated; this module makes that true in wall-clock
time, at batch 1 and in batches. It builds, from a ``BlockDropResNet`` in eval mode, an inference-only copy
of its parts (``InferenceEngine``):

- every conv + BatchNorm (+ ReLU) pair folded into one oneDNN convolution
  (``torch.ops.mkldnn._convolution_pointwise``), the second conv of a block fused with the residual add and
  ReLU; weights in channels_last, activations in channels_last. This also avoids PyTorch's slow im2col
  fallback that small convolutions take at batch 1.
- routing without waste: a block kept by only some samples gathers those rows (a row of an NHWC tensor is
  one contiguous slice, so this is a plain memory copy), runs on them and writes them back in place; the
  other rows are not touched (identity shortcut) or take the downsample. Blocks kept by all rows run on the
  batch as it is, blocks dropped by all rows are never executed.

The same engine runs the plain network (``full``), so the speed-up measured against it is the speed-up of
dropping blocks, not of the fusion. Blocks with parts the fusion does not cover (squeeze-excite, attention,
anti-aliasing) run as their own modules, still routed. On other devices than the CPU the engine runs the
model's own modules (channels_last), still routed.
"""
from operator import attrgetter
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck

from .routing import Routing, residual_stages, shortcut
from .policy_net import policy_input

__all__ = ['InferenceEngine', 'fusion_available', 'tune_cpu_allocator']

_conv_op = getattr(torch.ops.mkldnn, '_convolution_pointwise', None)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc ``mallopt``).

    At large batches every activation is tens to hundreds of MB; glibc serves those with ``mmap`` and
    unmaps them on free, so each forward pass page-faults and zeroes them again (seen as system time, up to
    5x slower per image for ResNet-101 at batch 64 here). Turning ``mmap`` off for the heap and never trimming
    it makes the allocations reuse memory. Process-wide: it helps every model in the process alike (the
    benchmark applies it before timing anything). Returns False where glibc is not available.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def fusion_available() -> bool:
    return _conv_op is not None and torch.backends.mkldnn.is_available()


def _is_identity(m: Optional[nn.Module]) -> bool:
    return m is None or isinstance(m, nn.Identity)


class FusedConv:
    """conv -> BatchNorm [-> ReLU] [+ residual, ReLU] as one oneDNN convolution (BN folded into weights)."""

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], relu: bool):
        w = conv.weight.detach().float()
        b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0])
        if bn is not None:
            scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
            b = bn.bias.detach().float() + (b - bn.running_mean.float()) * scale
            w = w * scale.view(-1, 1, 1, 1)
        self.weight = w.contiguous(memory_format=torch.channels_last)
        self.bias = b.contiguous()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.relu = relu
        self.attr = 'relu' if relu else 'none'
        # a stem conv on a few RGB images is faster through ATen's direct kernel than through oneDNN
        self.few_channels = w.shape[1] <= 4 and conv.groups == 1

        self._packed = {}

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """The weight pre-reordered into oneDNN's blocked layout for this input size (25 % faster at batch 1,
        neutral at larger batches), made once per spatial size."""
        size = x.shape[-2:]
        w = self._packed.get(size)
        if w is None:
            w = self._packed[size] = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.to_mkldnn(), *self.args[:3], self.args[3], [1, x.shape[1], *size])
        return w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.few_channels and x.shape[0] <= 4:
            padding, stride, dilation, groups = self.args
            y = F.conv2d(x.contiguous(), self.weight.contiguous(), self.bias, stride, padding, dilation, groups)
            y = F.relu_(y) if self.relu else y
            return y.contiguous(memory_format=torch.channels_last)
        return _conv_op(x, self.packed(x), self.bias, *self.args, self.attr, [], '')

    def add_relu(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + residual), fused."""
        return _conv_op.binary(x, residual, self.packed(x), self.bias, *self.args, 'add', 1.0, 'relu', [], '')


def _fuse_sequence(modules: Sequence[nn.Module]) -> Optional[List[Callable]]:
    """Fuse a flat list of Conv2d / BatchNorm2d / ReLU / other modules; None if a conv has no BN after it."""
    out, i = [], 0
    while i < len(modules):
        m = modules[i]
        if isinstance(m, nn.Conv2d):
            bn = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else None
            j = i + (2 if bn is not None else 1)
            relu = j < len(modules) and isinstance(modules[j], nn.ReLU)
            out.append(FusedConv(m, bn, relu))
            i = j + (1 if relu else 0)
        elif isinstance(m, (nn.BatchNorm2d, nn.ReLU)):
            return None  # a norm or activation not after a conv: leave this part unfused
        elif not _is_identity(m):
            out.append(m)
            i += 1
        else:
            i += 1
    return out


def _flatten(*modules: Optional[nn.Module]) -> List[nn.Module]:
    flat = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            flat.extend(_flatten(*m))
        elif m is not None:
            flat.append(m)
    return flat


class _Sequence:
    def __init__(self, parts: Sequence[Callable]):
        self.parts = list(parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.parts:
            x = p(x)
        return x


class FastBlock:
    """A residual block for inference: ``full(x)`` runs it, ``shortcut(x)`` is what dropping it gives."""

    def __init__(self, block: nn.Module, fuse: bool):
        self.module = block
        self.identity = getattr(block, 'downsample', None) is None
        self.fused = None
        self.down = None
        if fuse:
            self.fused = self._fuse(block)
            if not self.identity:
                parts = _fuse_sequence(_flatten(block.downsample))
                self.down = _Sequence(parts) if parts is not None else block.downsample

    @staticmethod
    def _fuse(block: nn.Module):
        plain_basic = isinstance(block, BasicBlock) and all(_is_identity(getattr(block, n, None)) for n in (
            'drop_block', 'aa', 'se', 'drop_path')) and isinstance(block.act1, nn.ReLU) and isinstance(
            block.act2, nn.ReLU) and isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn2, nn.BatchNorm2d)
        if plain_basic:
            return [FusedConv(block.conv1, block.bn1, True), FusedConv(block.conv2, block.bn2, False)]
        plain_bottleneck = isinstance(block, Bottleneck) and all(_is_identity(getattr(block, n, None)) for n in (
            'drop_block', 'aa', 'se', 'drop_path')) and all(isinstance(getattr(block, f'act{i}'), nn.ReLU)
                                                          for i in (1, 2, 3)) and all(
            isinstance(getattr(block, f'bn{i}'), nn.BatchNorm2d) for i in (1, 2, 3))
        if plain_bottleneck:
            return [FusedConv(block.conv1, block.bn1, True), FusedConv(block.conv2, block.bn2, True),
                    FusedConv(block.conv3, block.bn3, False)]
        return None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return self.down(x) if self.down is not None else shortcut(self.module, x)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is None:
            return self.module(x)
        h = x
        for conv in self.fused[:-1]:
            h = conv(h)
        return self.fused[-1].add_relu(h, self.shortcut(x))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels_last tensor as an (N, row) matrix view: row n is sample n, one contiguous slice.

    The row is viewed as 16-byte elements where its size allows: PyTorch's row gather/scatter kernels cost
    per element, so copying the same bytes as complex128 is about 3x faster than as float32 (bit-exact).
    """
    flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    if (flat.shape[1] * flat.element_size()) % 16 == 0:
        return flat.view(torch.complex128)
    return flat


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if not x.is_contiguous(memory_format=torch.channels_last):
        return x.index_select(0, idx)
    n, c, h, w = x.shape
    return _rows(x).index_select(0, idx).view(x.dtype).view(len(idx), h, w, c).permute(0, 3, 1, 2)


def _scatter_(out: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if out.is_contiguous(memory_format=torch.channels_last) and rows.is_contiguous(memory_format=torch.channels_last):
        _rows(out).index_copy_(0, idx, _rows(rows))
    else:
        out.index_copy_(0, idx, rows)
    return out


class _ResNetParts:
    """Stem, blocks and head of a (CIFAR or timm) ResNet, fused for inference where possible."""

    def __init__(self, net: nn.Module, blocks: Sequence[nn.Module], fuse: bool):
        self.net = net
        stem = _fuse_sequence(_flatten(net.conv1, net.bn1, net.act1)) if fuse else None
        self.stem = _Sequence(stem) if stem is not None else (lambda x: net.act1(net.bn1(net.conv1(x))))
        self.pool = getattr(net, 'maxpool', None)
        self.blocks = [FastBlock(b, fuse) for b in blocks]

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.pool(x) if self.pool is not None else x


class InferenceEngine:
    """Inference-only copy of a BlockDropResNet's computation (eval mode, no autograd)."""

    def __init__(self, model: nn.Module):
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        fuse = self.device.type == 'cpu' and self.dtype == torch.float32 and fusion_available()
        self.fused = fuse
        self.base = _ResNetParts(model.base, model.blocks, fuse)
        policy = model.policy
        self.policy = _ResNetParts(policy, [b for s in residual_stages(policy) for b in s], fuse)
        self.policy_img_size = model.policy_img_size
        self.forward_head = model.forward_head
        # every tensor the engine copied from: parameters and BN running statistics
        self._tensors = list(model.parameters()) + [
            b for n, b in model.named_buffers() if not n.endswith('num_batches_tracked')]
        self.version = self._version()

    def _version(self) -> int:
        return sum(map(_get_version, self._tensors))

    def is_stale(self) -> bool:
        """True once a parameter or buffer was modified in place (optimizer step, load_state_dict, init)."""
        return self._version() != self.version

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input in channels_last (a no-op when it already is: pass the result to both passes)."""
        return x.contiguous(memory_format=torch.channels_last)

    def policy_probs(self, x: torch.Tensor) -> torch.Tensor:
        h = self.policy.features_in(self.prepare(policy_input(self.prepare(x), self.policy_img_size)))
        for block in self.policy.blocks:
            h = block.full(h)
        return torch.sigmoid(self.policy.net.forward_head(h))

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network, every block kept, no policy: the baseline the routed path is held to."""
        h = self.base.features_in(self.prepare(x))
        for block in self.base.blocks:
            h = block.full(h)
        return self.forward_head(h)

    def routed(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits under ``keep``: each block runs only on the rows that keep it."""
        routing = Routing(keep, device=x.device)
        h = self.base.features_in(self.prepare(x))  # a buffer of ours: rows may be updated in place
        for block, route in zip(self.base.blocks, routing.plan):
            if isinstance(route, str):
                h = block.full(h) if route == 'all' else block.shortcut(h)
                continue
            kept, dropped = route
            y = block.full(_gather(h, kept))
            if block.identity:
                h = _scatter_(h, kept, y)
            else:
                out = block.shortcut(_gather(h, dropped))
                merged = torch.empty((h.shape[0], *y.shape[1:]), dtype=y.dtype, device=y.device,
                                     memory_format=torch.channels_last)
                h = _scatter_(_scatter_(merged, kept, y), dropped, out)
        return self.forward_head(h)


_get_version = attrgetter('_version')
