"""Fused inference for BlockDrop on CPU: a frozen copy of a model, with folded convolutions, routed the same way.

Paper Sec. 3.2 promises that only the kept blocks are evaluated; this module makes that true in wall-clock
time, at batch 1 and in batches. Fusion is explicit, as for timm's reparameterizable models (RepVGG, MobileOne):
``BlockDropResNet.fuse()`` returns a ``FusedBlockDrop``, a frozen inference-only copy taken from the model's
weights at that moment (``timm.utils.reparameterize_model`` calls ``fuse()`` on a BlockDrop model held inside
another module). The model itself never caches anything: plain ``model(x)`` always runs its own modules.

What the copy changes is only the kernels each block calls (``routing.BlockKernels``); which rows run which
block is ``routing.py``'s, shared with the model:

- every conv + BatchNorm (+ ReLU) pair folded (``torch.nn.utils.fusion.fuse_conv_bn_weights``) into one oneDNN
  convolution (``torch.ops.mkldnn._convolution_pointwise``), the second conv of a block fused with the residual
  add and ReLU; weights and activations in channels_last. This also avoids PyTorch's slow im2col fallback that
  small convolutions take at batch 1.
- rows are gathered and written back as plain memory copies (a row of an NHWC tensor is one contiguous slice).

``forward_full`` runs the plain network on the same kernels, so the speed-up measured against it is the speed-up
of dropping blocks, not of the fusion. Blocks with parts the fusion does not cover (squeeze-excite, attention,
anti-aliasing) run as their own modules, still routed. On other devices than the CPU, or in other dtypes, the
copy runs the model's own modules (channels_last), still routed.
"""
import copy
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models.resnet import BasicBlock, Bottleneck
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .policies import greedy
from .policy_net import StemPolicyHead, keep_probabilities
from .routing import BlockKernels, Routing, keep_nonfinite, nonfinite_rows, residual_stages, run_blocks

__all__ = ['FusedBlockDrop', 'FusedConv', 'FusedBlock', 'fusion_available', 'tune_cpu_allocator']

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
        b = conv.bias.detach().float() if conv.bias is not None else None
        if bn is not None:
            w, b = fuse_conv_bn_weights(
                w, b, bn.running_mean.float(), bn.running_var.float(), bn.eps,
                None if bn.weight is None else bn.weight.detach().float(),
                None if bn.bias is None else bn.bias.detach().float())
        b = torch.zeros(w.shape[0]) if b is None else b
        self.weight = w.detach().contiguous(memory_format=torch.channels_last)
        self.bias = b.detach().contiguous()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.relu = relu
        self.attr = 'relu' if relu else 'none'
        # a stem conv on a few RGB images is faster through ATen's direct kernel than through oneDNN
        self.few_channels = w.shape[1] <= 4 and conv.groups == 1
        self._packed = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_packed'] = {}  # oneDNN-packed weights cannot be copied or pickled; they are made again on use
        return state

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """The weight pre-reordered into oneDNN's blocked layout for this input size (25 % faster at batch 1,
        neutral at larger batches), made once per spatial size from this frozen copy's own weight."""
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


_PLAIN_PARTS = ('drop_block', 'aa', 'se', 'drop_path')


def _plain(block: nn.Module, n_convs: int) -> bool:
    return (all(_is_identity(getattr(block, n, None)) for n in _PLAIN_PARTS)
            and all(isinstance(getattr(block, f'act{i}'), nn.ReLU) for i in range(1, n_convs + 1))
            and all(isinstance(getattr(block, f'bn{i}'), nn.BatchNorm2d) for i in range(1, n_convs + 1)))


class FusedBlock(BlockKernels):
    """A residual block's kernels with conv + BN (+ ReLU) folded; its own modules where the fusion does not apply."""

    def __init__(self, block: nn.Module, fuse: bool):
        super().__init__(block)
        self.fused = self._fuse(block) if fuse else None
        self.down = None
        if fuse and not self.identity:
            parts = _fuse_sequence(_flatten(block.downsample))
            self.down = _Sequence(parts) if parts is not None else None

    @staticmethod
    def _fuse(block: nn.Module):
        if isinstance(block, BasicBlock) and _plain(block, 2):
            return [FusedConv(block.conv1, block.bn1, True), FusedConv(block.conv2, block.bn2, False)]
        if isinstance(block, Bottleneck) and _plain(block, 3):
            return [FusedConv(block.conv1, block.bn1, True), FusedConv(block.conv2, block.bn2, True),
                    FusedConv(block.conv3, block.bn3, False)]
        return None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            return self.down(x)
        return super().shortcut(x)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is None:
            return self.module(x)
        h = x
        for conv in self.fused[:-1]:
            h = conv(h)
        return self.fused[-1].add_relu(h, self.shortcut(x))


class _AvgLinearHead:
    """A ResNet's average-pool + linear classifier as one mean and one addmm: timm's SelectAdaptivePool2d('avg')
    and nn.Linear take 40 us more at batch 1 on this CPU, for the same numbers (fp32 rounding apart)."""

    def __init__(self, fc: nn.Linear):
        self.weight_t = fc.weight.detach().float().t().contiguous()
        self.bias = (fc.bias.detach().float() if fc.bias is not None else torch.zeros(fc.out_features)).contiguous()

    @staticmethod
    def applies(net: nn.Module) -> bool:
        pool, fc = getattr(net, 'global_pool', None), getattr(net, 'fc', None)
        return (isinstance(pool, SelectAdaptivePool2d) and pool.pool_type == 'avg'
                and isinstance(pool.flatten, nn.Flatten) and isinstance(fc, nn.Linear))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.mean((2, 3)), self.weight_t)


class _StemHeadKernels:
    """A ``StemPolicyHead`` on a channels_last stem output as one mean over its pooling windows and two addmm:
    fc1's columns are reordered offline to the (row, column, channel) order of the channels_last pooled grid, so
    no transpose or flatten copy runs. Half the head's calls at batch 1; the same logits (fp32 rounding apart)."""

    def __init__(self, head: nn.Module):
        g, hidden = head.grid, head.fc1.out_features
        self.grid = g
        w1 = head.fc1.weight.detach().float().view(hidden, head.in_chans, g, g).permute(0, 2, 3, 1)
        self.w1_t = w1.reshape(hidden, -1).t().contiguous()
        self.b1 = head.fc1.bias.detach().float().contiguous()
        self.w2_t = head.fc.weight.detach().float().t().contiguous()
        self.b2 = head.fc.bias.detach().float().contiguous()
        self.module = head

    def __call__(self, stem: torch.Tensor) -> torch.Tensor:
        b, c, h, w = stem.shape
        g = self.grid
        if h % g or w % g or not stem.is_contiguous(memory_format=torch.channels_last):
            return self.module(stem)  # uneven windows: adaptive pooling's own rule
        pooled = stem.permute(0, 2, 3, 1).reshape(b, g, h // g, g, w // g, c).mean((2, 4)).reshape(b, -1)
        return torch.addmm(self.b2, torch.addmm(self.b1, pooled, self.w1_t).relu_(), self.w2_t)


class _FusedNet:
    """Stem, block kernels and classifier of a (CIFAR or timm) ResNet, fused where possible."""

    def __init__(self, net: nn.Module, blocks: Sequence[nn.Module], fuse: bool):
        self.net = net
        stem = _fuse_sequence(_flatten(net.conv1, net.bn1, net.act1)) if fuse else None
        self.stem = _Sequence(stem) if stem is not None else (lambda x: net.act1(net.bn1(net.conv1(x))))
        self.pool = getattr(net, 'maxpool', None)
        self.blocks = [FusedBlock(b, fuse) for b in blocks]
        self.head = _AvgLinearHead(net.fc) if fuse and _AvgLinearHead.applies(net) else net.forward_head

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        return self.pool(x) if self.pool is not None else x


class FusedBlockDrop(nn.Module):
    """A frozen, fused, inference-only copy of a BlockDropResNet (made by ``BlockDropResNet.fuse()``).

    It answers ``forward`` (greedy policy), ``forward_with_policy``, ``policy_probs``, ``default_policy``,
    ``forward_full`` (every block, no policy) and ``flops``, with the numbers of the model it was made from
    (fp32 rounding apart). It holds its own copy of the weights: later edits of the original model do not reach it
    (fuse again), and it cannot be trained or moved (fuse the model after moving it).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model = copy.deepcopy(model).eval().requires_grad_(False)
        p = next(model.parameters())
        fuse = p.device.type == 'cpu' and p.dtype == torch.float32 and fusion_available()
        self.fused = fuse
        self.model = model
        self.threshold = model.threshold
        self.num_blocks = model.num_blocks
        self.policy_img_size = model.policy_img_size
        self.pretrained_cfg = model.pretrained_cfg
        self._base = _FusedNet(model.base, model.blocks, fuse)
        policy = model.policy
        self.policy_reads_stem = model.policy_reads_stem
        # a head on the stem has no convolution to fold: it reads the fused stem's output
        self._policy = None if self.policy_reads_stem else _FusedNet(
            policy, [b for s in residual_stages(policy) for b in s], fuse)
        self._stem_head = None
        if self.policy_reads_stem:
            self._stem_head = _StemHeadKernels(policy) if fuse and isinstance(policy, StemPolicyHead) else policy
        self.eval()

    # a frozen copy: the fused kernels were made from the weights as they were
    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError('a fused BlockDrop model is inference-only: train the model it was made from '
                               'and call fuse() on it again')
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        raise RuntimeError('a fused BlockDrop model cannot be moved or cast: move the model first (.to(...)) '
                           'and call fuse() on it then')

    def kernels(self) -> List[FusedBlock]:
        return self._base.blocks

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._base.features_in(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._base.head(x)

    def _policy_logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self._policy.features_in(x)
        for block in self._policy.blocks:
            h = block.full(h)
        return self._policy.net.forward_head(h)

    def _probs(self, x: torch.Tensor, stem: Optional[torch.Tensor], bad: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
        if self.policy_reads_stem:
            probs = keep_probabilities(self._stem_head, self.forward_stem(x) if stem is None else stem, None)
        else:
            probs = keep_probabilities(self._policy_logits, x, self.policy_img_size)
        return keep_nonfinite(x, probs, bad)

    def policy_probs(self, x: torch.Tensor) -> torch.Tensor:
        """s = sigmoid(f_pn(x)) (Eq. 2), NaN for rows whose input is not finite."""
        return self._probs(x, None)

    def default_policy(self, x: torch.Tensor) -> torch.Tensor:
        """The greedy policy at ``threshold``."""
        return greedy(self.policy_probs(x), self.threshold)

    def check_keep(self, keep: torch.Tensor, batch: Optional[int] = None) -> torch.Tensor:
        return self.model.check_keep(keep, batch)

    def _routed(self, x: torch.Tensor, stem: torch.Tensor, keep: torch.Tensor,
                bad: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = run_blocks(self._base.blocks, stem, keep, Routing(keep, device=x.device), owned=True)
        return keep_nonfinite(x, self.forward_head(h), bad)

    def forward_with_policy(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits under an explicit (B, K) policy: each block runs only on the rows that keep it."""
        self.model.check_input(x)
        keep = self.check_keep(keep, x.shape[0])
        return self._routed(x, self.forward_stem(x), keep)

    def forward_and_policy(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, greedy keep) of the model's own forward: a policy on the stem shares the stem's output with the
        blocks (computed once). ``keep``: run the policy network all the same, but the blocks under this (B, K)
        policy (what a benchmark of random policies times)."""
        self.model.check_input(x)
        x = x.contiguous(memory_format=torch.channels_last)  # once, for both passes
        stem = self.forward_stem(x) if self.policy_reads_stem else None
        bad = nonfinite_rows(x)  # once, for the probabilities and the logits
        probs = self._probs(x, stem, bad)  # (run even when ``keep`` replaces its decisions: its time counts)
        keep = greedy(probs, self.threshold) if keep is None else self.check_keep(keep, x.shape[0])
        return self._routed(x, self.forward_stem(x) if stem is None else stem, keep, bad), keep

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network, every block kept, no policy: the baseline the routed path is held to."""
        self.model.check_input(x)
        h = self.forward_stem(x)
        for block in self._base.blocks:
            h = block.full(h)
        return keep_nonfinite(x, self.forward_head(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_policy(x)[0]

    def flops(self, keep: torch.Tensor, include_policy: bool = True, img_size=None) -> torch.Tensor:
        return self.model.flops(keep, include_policy, img_size)
