"""CIFAR ResNets (He et al. 2016, Sec. 4.2): the BlockDrop paper's CIFAR base models, which timm lacks.

3x3 stem (no max-pool), three stages of BasicBlocks with 16/32/64 channels, global average pool, linear head.
Depth 6n+2 gives n blocks per stage: ResNet-20/32/44/56/110 have K = 9/15/21/27/54 blocks.
Two shortcut kinds for the stage transitions: "A" (parameter-free: stride-2 subsample and zero-pad the
channels, as in akamaster/pytorch_resnet_cifar10) and "B" (1x1 conv + BN, as in chenyaofo/pytorch-cifar-models).

The blocks are timm's own ``BasicBlock``; attribute names follow timm's ``ResNet`` (``conv1``, ``bn1``,
``act1``, ``layer1..3``, ``global_pool``, ``fc``) so BlockDrop wraps both families the same way.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.resnet import BasicBlock, downsample_conv

from .checkpoints import build_with_clear_errors, check_state_dict_fits
from .pretrained_cfgs import CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN, CIFAR10_STD

__all__ = ['CifarResNet', 'ShortcutA']


class ShortcutA(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad channels equally on both sides."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.pad = (out_chs - in_chs) // 2
        self.extra = out_chs - in_chs - self.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.extra))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs, with timm's model interface."""

    def __init__(
            self,
            layers: Tuple[int, ...] = (3, 3, 3),
            channels: Tuple[int, ...] = (16, 32, 64),
            shortcut: str = 'A',
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        super().__init__()
        if shortcut not in ('A', 'B'):
            raise ValueError(f"shortcut must be 'A' (parameter-free) or 'B' (1x1 conv + BN), got {shortcut!r}")
        if len(layers) != len(channels):
            raise ValueError(f'layers {layers} and channels {channels} must have the same length')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        inplanes = channels[0]
        self.conv1 = nn.Conv2d(in_chans, inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=inplanes, reduction=1, module='act1')]

        total_blocks, block_idx, reduction = sum(layers), 0, 1
        for stage_idx, (planes, num_blocks) in enumerate(zip(channels, layers)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(num_blocks):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != planes):
                    if shortcut == 'A':
                        downsample = ShortcutA(inplanes, planes, stride)
                    else:
                        downsample = downsample_conv(inplanes, planes, kernel_size=1, stride=stride)
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(BasicBlock(
                    inplanes, planes, stride=stride if i == 0 else 1, downsample=downsample,
                    drop_path=DropPath(dpr) if dpr > 0 else None,
                ))
                inplanes = planes
                block_idx += 1
            self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=planes, reduction=reduction, module=f'layer{stage_idx + 1}'))
        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))

        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        return dict(stem=r'^conv1|^bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def stages(self) -> List[nn.Module]:
        return [getattr(self, n) for n in self.stage_names]

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages()[:max_index] if stop_early else self.stages()
        for feat_idx, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        for n in self.stage_names[max_index:]:
            setattr(self, n, nn.Sequential())
        if max_index < len(self.stage_names):
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages(), x, flatten=True)
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CifarResNet) -> Dict[str, torch.Tensor]:
    """Map the published CIFAR checkpoints onto this module's names, then check they fit.

    Handles the ``module.`` prefix of DataParallel checkpoints and the ``linear`` head name of
    akamaster/pytorch_resnet_cifar10 (timm's loader has already unwrapped a ``state_dict`` entry).
    """
    out = {}
    for k, v in state_dict.items():
        k = k[len('module.'):] if k.startswith('module.') else k
        if k.startswith('linear.'):
            k = 'fc.' + k[len('linear.'):]
        out[k] = v
    cfg = getattr(model, 'pretrained_cfg', {})
    source = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or 'state_dict'
    head_changes = cfg.get('num_classes') not in (None, model.num_classes)
    check_state_dict_fits(out, model, source, skip_prefixes=('fc.',) if head_changes else ())
    return out


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_with_clear_errors(
        CifarResNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', (0, 1, 2, 3))),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        **kwargs,
    }


_AKAMASTER = dict(
    license='bsd-2-clause', origin_url='https://github.com/akamaster/pytorch_resnet_cifar10',
    paper_ids='arXiv:1512.03385',
)
default_cfgs = generate_default_cfgs({
    # weights: ../shared/weights/cifar10-resnet (pass pretrained_cfg_overlay=dict(file=...))
    'cifar_resnet20.cifar10': _cfg(**_AKAMASTER),
    'cifar_resnet32.cifar10': _cfg(**_AKAMASTER),
    'cifar_resnet44.cifar10': _cfg(**_AKAMASTER),
    'cifar_resnet56.cifar10': _cfg(**_AKAMASTER),
    'cifar_resnet56.cifar100': _cfg(
        num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, license='bsd-3-clause',
        origin_url='https://github.com/chenyaofo/pytorch-cifar-models', paper_ids='arXiv:1512.03385',
        notes=('shortcut B: create with shortcut="B"',),
    ),
    'cifar_resnet110.cifar10': _cfg(license='apache-2.0', paper_ids='arXiv:1512.03385'),
})


def _depth_layers(depth: int) -> Tuple[int, int, int]:
    n = (depth - 2) // 6
    return (n, n, n)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR, K = 9 blocks."""
    return _create_cifar_resnet('cifar_resnet20', pretrained, **dict(dict(layers=_depth_layers(20)), **kwargs))


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR, K = 15 blocks."""
    return _create_cifar_resnet('cifar_resnet32', pretrained, **dict(dict(layers=_depth_layers(32)), **kwargs))


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR, K = 21 blocks."""
    return _create_cifar_resnet('cifar_resnet44', pretrained, **dict(dict(layers=_depth_layers(44)), **kwargs))


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR, K = 27 blocks."""
    return _create_cifar_resnet('cifar_resnet56', pretrained, **dict(dict(layers=_depth_layers(56)), **kwargs))


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR, K = 54 blocks."""
    return _create_cifar_resnet('cifar_resnet110', pretrained, **dict(dict(layers=_depth_layers(110)), **kwargs))
