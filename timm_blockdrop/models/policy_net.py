"""Policy networks f_pn (paper Sec. 3.2, Eq. 2 and Sec. 4.1): small ResNets with K outputs.

``policy_resnet8``: CIFAR ResNet-8 (one BasicBlock per stage, 16/32/64 channels) on the 32 px image.
``policy_resnet10``: ResNet-10 (one BasicBlock per stage, 64..512 channels, 7x7 stem) that BlockDrop runs on
the image downsampled to 112 px. ``policy_stem_head`` (not in the paper): a head on the base ResNet's stem
features, with no convolution of its own. Their ``num_classes`` is the number of blocks K; ``keep_probabilities``
applies the sigmoid. Registered as timm models so another policy is a config change (``policy_model``).
"""
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from .checkpoints import build_with_clear_errors
from .cifar_resnet import CIFAR10_MEAN, CIFAR10_STD, CifarResNet, checkpoint_filter_fn


def policy_input(x: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """The image as the policy network sees it: average-pooled to ``size`` px (224 -> 112 is the paper's
    2x2 average pool), or as it is when ``size`` is None or already matches."""
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.adaptive_avg_pool2d(x, size)
    return x


def keep_probabilities(policy: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       size: Optional[int]) -> torch.Tensor:
    """s = sigmoid(f_pn(x)), the (B, K) keep probabilities of Eq. 2, with f_pn = ``policy`` run on ``policy_input``
    (the model's own policy network, or its fused copy). s is float32 under autocast too: REINFORCE's log-probs
    and rewards come from it (bf16 would keep 8 bits of s)."""
    return torch.sigmoid(policy(policy_input(x, size)).float())


def _cfg(**kwargs) -> Dict[str, Any]:
    return {'url': '', 'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0', **kwargs}


default_cfgs = generate_default_cfgs({
    'policy_resnet8.untrained': _cfg(
        num_classes=15, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, interpolation='bilinear',
        mean=CIFAR10_MEAN, std=CIFAR10_STD),
    'policy_resnet8_tiny.untrained': _cfg(
        num_classes=15, input_size=(3, 16, 16), pool_size=(4, 4), crop_pct=1.0, interpolation='bilinear',
        mean=CIFAR10_MEAN, std=CIFAR10_STD),
    'policy_stem_head.untrained': _cfg(
        num_classes=15, input_size=(16, 32, 32), first_conv='fc1', crop_pct=1.0, interpolation='bilinear',
        mean=CIFAR10_MEAN, std=CIFAR10_STD),
    'policy_resnet10.untrained': _cfg(
        num_classes=33, input_size=(3, 112, 112), pool_size=(4, 4), crop_pct=0.875, interpolation='bicubic',
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
})


def _create_policy_resnet8(name: str, channels, pretrained: bool, **kwargs) -> CifarResNet:
    model_args = dict(layers=(1, 1, 1), channels=channels, shortcut='A')
    return build_with_clear_errors(
        CifarResNet, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', (0, 1, 2, 3))),
        **dict(model_args, **kwargs))


@register_model
def policy_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 policy for CIFAR (paper Sec. 4.1): K outputs (set ``num_classes=K``)."""
    return _create_policy_resnet8('policy_resnet8', (16, 32, 64), pretrained, **kwargs)


@register_model
def policy_resnet8_tiny(pretrained: bool = False, **kwargs) -> CifarResNet:
    """A cheap policy (issue 11, not in the paper): ResNet-8 at half width (8/16/32 channels), meant for the image
    average-pooled to 16 px (``policy_img_size=16``): 1.6E6 FLOPs, 1.2 % of a CIFAR ResNet-32, against 17.8 % for
    ``policy_resnet8`` on the 32 px image."""
    return _create_policy_resnet8('policy_resnet8_tiny', (8, 16, 32), pretrained, **kwargs)


@register_model
def policy_resnet10(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 policy for ImageNet-size inputs (paper Sec. 4.1), run at 112 px: K outputs."""
    model_args = dict(block=BasicBlock, layers=(1, 1, 1, 1))
    return build_with_clear_errors(ResNet, 'policy_resnet10', pretrained, **dict(model_args, **kwargs))


STEM_POLICIES = ('policy_stem_head',)  # the registered policies that read the base's stem features


class StemPolicyHead(nn.Module):
    """f_pn read off the base ResNet's stem output (issue 11's cheap policy; not in the paper, whose f_pn sees the
    image): average-pooled to ``grid`` x ``grid``, then a two-layer MLP with K outputs.

    It adds no convolution. On a CPU at batch 1 every convolution call costs about the same whatever its size
    (about 60 us for a CIFAR ResNet's, measured), so a ResNet-8 policy's 7 calls cost as much as 3-4 blocks of the
    base however small its input; this head costs two small matrix products. Its input is detached: the policy's
    REINFORCE loss does not train the ResNet's stem.
    """
    reads_stem = True

    def __init__(self, num_classes: int = 15, in_chans: int = 16, grid: int = 4, hidden: int = 64, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f'policy_stem_head got unexpected arguments: {sorted(kwargs)}')
        self.num_classes, self.in_chans, self.grid = num_classes, in_chans, grid
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc1 = nn.Linear(in_chans * grid * grid, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(hidden, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, stem: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(self.pool(stem.detach()).flatten(1))))


def reads_stem(policy: nn.Module) -> bool:
    """Whether ``policy`` takes the base's stem features (``StemPolicyHead``) rather than the image."""
    return bool(getattr(policy, 'reads_stem', False))


@register_model
def policy_stem_head(pretrained: bool = False, **kwargs) -> StemPolicyHead:
    """A cheap policy (issue 11, not in the paper) on the base's stem features: pool to 4x4, MLP (hidden 64), K
    outputs; ``in_chans`` is the stem's width (BlockDrop sets it). For a CIFAR ResNet-32 it costs 3.5E4 FLOPs,
    0.03 % of the ResNet, and adds no convolution."""
    return build_with_clear_errors(StemPolicyHead, 'policy_stem_head', pretrained, **kwargs)
