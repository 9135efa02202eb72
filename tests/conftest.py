"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) against the read-only ../shared folder."""
import os
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_EVALUATE_OFFLINE', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

import timm_blockdrop  # noqa: E402,F401  (registers the models)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('BLOCKDROP_SHARED', REPO.parent / 'shared'))
CIFAR10 = SHARED / 'data' / 'cifar10'
WEIGHTS = SHARED / 'weights'
RESNET_FILES = {d: next((WEIGHTS / 'cifar10-resnet').glob(f'resnet{d}-*.th')) for d in (20, 32, 44, 56)}
CIFAR100_R56 = WEIGHTS / 'cifar100-resnet' / 'cifar100_resnet56-f2eff4c8.pt'

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope='session')
def shared():
    assert CIFAR10.is_dir(), f'the shared CIFAR-10 folder is missing: {CIFAR10} (set BLOCKDROP_SHARED)'
    return SHARED


@pytest.fixture(scope='session')
def resnet32_file(shared):
    return RESNET_FILES[32]


@pytest.fixture(scope='session')
def cifar_test_slice(shared):
    """The first 256 CIFAR-10 test images, transformed for the CIFAR-10 checkpoints, as (images, labels)."""
    import timm
    from timm_blockdrop.data import eval_transform, find_columns, load_split
    ds = load_split(str(CIFAR10), 'test').select(range(256))
    img_col, label_col = find_columns(ds)
    tf = eval_transform(timm.create_model('cifar_resnet20'))
    images = torch.stack([tf(r[img_col].convert('RGB')) for r in ds])
    return images, torch.tensor(ds[label_col])
