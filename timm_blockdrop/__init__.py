"""BlockDrop (Wu, Nagarajan et al., CVPR 2018) as a timm plugin.

``import timm_blockdrop`` registers with timm: ``cifar_resnet{20,32,44,56,110}`` (CIFAR base ResNets),
``policy_resnet{8,10}`` (policy networks) and ``blockdrop_resnet{18,34,50,101,152}``,
``blockdrop_cifar_resnet{20,32,44,56,110}`` (BlockDrop models). ``wrap`` turns any ResNet-class timm model
into a ``BlockDropResNet``.
"""
from .errors import CheckpointError, UnsupportedModelError
from .models import BlockDropResNet, CifarResNet, wrap
from .models import policies
from .models.policies import heuristic_policy

__version__ = '0.1.0'
__all__ = ['BlockDropResNet', 'CifarResNet', 'wrap', 'policies', 'heuristic_policy', 'CheckpointError',
           'UnsupportedModelError']
