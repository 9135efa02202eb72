"""Pretrained tags of the blockdrop_* entries: data config, licence, provenance and where weights live.

``blockdrop.py`` turns this into its ``default_cfgs`` with timm's ``generate_default_cfgs``.
"""
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .cifar_resnet import CIFAR10_MEAN, CIFAR10_STD

PAPER_ID = 'arXiv:1711.08393'
ORIGIN_URL = 'https://github.com/Tushar-N/blockdrop'


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': ('base.conv1', 'policy.conv1'), 'classifier': 'base.fc',
        'license': 'apache-2.0', 'paper_ids': PAPER_ID, 'origin_url': ORIGIN_URL,
        **kwargs,
    }


def _cifar_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(**dict(dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        mean=CIFAR10_MEAN, std=CIFAR10_STD), **kwargs))


def blockdrop_pretrained_cfgs() -> Dict[str, Dict[str, Any]]:
    """``{'entry.tag': cfg}`` for every blockdrop_* entry."""
    return {
        **{f'blockdrop_resnet{d}.in1k': _cfg(notes=(f'base: timm resnet{d}', 'policy: ResNet-10 at 112 px'))
           for d in (18, 34, 50, 101, 152)},
        **{f'blockdrop_cifar_resnet{d}.cifar10': _cifar_cfg(
            notes=(f'base: cifar_resnet{d} (shortcut A)', 'policy: ResNet-8 at 32 px'))
           for d in (20, 32, 44, 56, 110)},
    }
