"""timm entries of this package; importing this module registers them with timm."""
from .cifar_resnet import CifarResNet, ShortcutA
from .policy_net import policy_resnet8, policy_resnet10
from .blockdrop import BlockDropResNet, UnsupportedModelError, wrap

__all__ = ['CifarResNet', 'ShortcutA', 'policy_resnet8', 'policy_resnet10', 'BlockDropResNet',
           'UnsupportedModelError', 'wrap']
