"""Pretrained tags of the blockdrop_* entries: data config, licence, provenance and where weights live.

``blockdrop.py`` turns this into its ``default_cfgs`` with timm's ``generate_default_cfgs``. Every tag's
weights live on the Hugging Face Hub under ``HUB_ORG`` as ``HUB_ORG/<entry>.<tag>`` (timm's own convention,
``timm/<entry>.<tag>``), so ``timm.create_model('blockdrop_cifar_resnet32', pretrained=True)`` downloads them
through timm's normal machinery. ``blockdrop publish`` (``timm_blockdrop/tools/hub.py``) writes those repos.
"""
from typing import Any, Dict, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD', 'HUB_ORG', 'DATASETS', 'RELEASED_TAGS',
           'LOCAL_RELEASES', 'RELEASE_MODEL_ARGS', 'hub_id', 'release_status', 'blockdrop_pretrained_cfgs']

# normalisation the shared CIFAR-10 checkpoints were trained with (see shared/weights/README.md), and the CIFAR-100
# one; the CIFAR ResNets' own tags use them too
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5070, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

PAPER_ID = 'arXiv:1711.08393'
PAPER_NAME = 'BlockDrop: Dynamic Inference Paths in Residual Networks'
ORIGIN_URL = 'https://github.com/Tushar-N/blockdrop'
# the project's Hugging Face Hub organisation: the one place it is named
HUB_ORG = 'timm-blockdrop'

# pretrained tag -> the data set it names: Hub id, display name, evaluation split and its size
DATASETS = {
    'cifar10': dict(hub_id='uoft-cs/cifar10', name='CIFAR-10', split='test', num_images=10000),
    'cifar100': dict(hub_id='uoft-cs/cifar100', name='CIFAR-100', split='test', num_images=10000),
    'in1k': dict(hub_id='ILSVRC/imagenet-1k', name='ImageNet-1k', split='validation', num_images=50000),
}

# 'entry.tag' whose weights are published under HUB_ORG (README, "Publishing to the Hub", lists the same)
RELEASED_TAGS = frozenset()
# 'entry.tag' -> its Hub-ready folder (blockdrop publish --dry-run) committed in the project repository, not uploaded
LOCAL_RELEASES = {name: f'release/{name}' for name in ('blockdrop_cifar_resnet20.cifar10',
                                                      'blockdrop_cifar_resnet32.cifar10',
                                                      'blockdrop_cifar_resnet56.cifar10')}

# 'entry.tag' -> the model args its released weights were trained with where they differ from the entry's defaults
# (the paper's policy): timm builds a tag from its entry, so pretrained=True must build the released architecture
RELEASE_MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    'blockdrop_cifar_resnet32.cifar10': dict(policy_model='policy_stem_head', policy_img_size=None),  # issue 11
    'blockdrop_cifar_resnet56.cifar10': dict(policy_model='policy_stem_head', policy_img_size=None),  # issue 11
}

_CIFAR10_BASE = 'akamaster/pytorch_resnet_cifar10 weights (BSD 2-Clause), shortcut A'


def hub_id(name: str) -> str:
    """The Hub repo of a pretrained tag, ``'blockdrop_cifar_resnet32.cifar10'`` -> ``'timm-blockdrop/...'``."""
    return f'{HUB_ORG}/{name}'


def release_status(name: str) -> Optional[str]:
    """For an 'entry.tag' of this project with no released weights: a sentence saying why and how to get them."""
    entry, _, tag = name.partition('.')
    if not entry.startswith('blockdrop_') or name in RELEASED_TAGS:
        return None
    if name in LOCAL_RELEASES:
        folder = LOCAL_RELEASES[name]
        return (f'the weights of {name} are not on the Hub yet: a Hub-ready copy is in the folder {folder} of '
                f"the timm-blockdrop repository; from a clone, timm.create_model('local-dir:{folder}', "
                f'pretrained=True)')
    if tag == 'in1k':
        return (f'no weights are released for {name} yet: ImageNet BlockDrop models need a GPU cluster with '
                f'ImageNet and are trained with the ImageNet recipe (recipes/configs/imagenet_resnet101_cl.yaml, '
                f'then _ft.yaml)')
    return (f'no weights are released for {name} yet: the CIFAR weights come from the reproduction runs of the '
            f'training recipes (recipes/configs/); see README, "Publishing to the Hub"')


def _cfg(name: str, dataset: str, base: str, **kwargs) -> Dict[str, Any]:
    data = DATASETS[dataset]
    policy = 'ResNet-10 on the image average-pooled to 112 px' if dataset == 'in1k' else 'ResNet-8 at 32 px'
    if RELEASE_MODEL_ARGS.get(name, {}).get('policy_model') == 'policy_stem_head':
        policy = "a head on the base's stem features (policy_stem_head)"
    cfg = {
        'url': '', 'hf_hub_id': hub_id(name), 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': ('base.conv1', 'policy.conv1'), 'classifier': 'base.fc',
        'license': 'apache-2.0', 'paper_ids': PAPER_ID, 'paper_name': PAPER_NAME, 'origin_url': ORIGIN_URL,
        'description': f"BlockDrop {name.split('.')[0][len('blockdrop_'):]} trained on {data['name']}",
        'notes': (f"dataset: {data['hub_id']}", f'base: {base}', f'policy: {policy}'),
    }
    cfg.update(kwargs)
    return cfg


def _cifar_cfg(name: str, dataset: str, base: str, **kwargs) -> Dict[str, Any]:
    return _cfg(name, dataset, base, **dict(dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        mean=CIFAR10_MEAN, std=CIFAR10_STD), **kwargs))


def blockdrop_pretrained_cfgs() -> Dict[str, Dict[str, Any]]:
    """``{'entry.tag': cfg}`` for every blockdrop_* entry (the first tag of an entry is its default)."""
    cfgs = {}
    for d in (18, 34, 50, 101, 152):
        name = f'blockdrop_resnet{d}.in1k'
        # timm's default resnet{d} weights (apache-2.0), as the ImageNet recipe loads them
        cfgs[name] = _cfg(name, 'in1k', f"resnet{d}.{'a1h' if d >= 101 else 'a1'}_in1k (timm)")
    for d in (20, 32, 44, 56):
        name = f'blockdrop_cifar_resnet{d}.cifar10'
        cfgs[name] = _cifar_cfg(name, 'cifar10', f'cifar_resnet{d}.cifar10 ({_CIFAR10_BASE})', license='bsd-2-clause')
    name = 'blockdrop_cifar_resnet110.cifar10'
    cfgs[name] = _cifar_cfg(name, 'cifar10', 'cifar_resnet110, trained by this project (shortcut A)')
    name = 'blockdrop_cifar_resnet56.cifar100'
    cfgs[name] = _cifar_cfg(
        name, 'cifar100', 'cifar_resnet56.cifar100 (chenyaofo/pytorch-cifar-models weights, BSD 3-Clause), '
                          "shortcut B: create with base_kwargs={'shortcut': 'B'}",
        num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, license='bsd-3-clause')
    return cfgs
