"""Images from HF ``datasets`` (a Hub id or a local folder) through the model's own timm transforms.

Normalisation, size, crop and interpolation come from the model's ``pretrained_cfg`` via
``timm.data.resolve_data_config``; columns are found from the dataset's features (a ``datasets.Image`` column
and a ``ClassLabel`` column) unless given.
"""
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ['load_split', 'find_columns', 'eval_transform', 'train_transform', 'with_transform', 'make_loader']

_LABEL_NAMES = ('label', 'labels', 'fine_label', 'target', 'class')


def _looks_like_path(data: str) -> bool:
    """A local path rather than a Hub id ('name' or 'org/name')."""
    return data.startswith(('.', '/', '~')) or data.count('/') > 1 or Path(data).expanduser().exists()


def load_split(data: str, split: str = 'test', streaming: bool = False):
    """``datasets.load_dataset(data, split=split)`` with clear errors for a missing path or split."""
    import datasets

    if _looks_like_path(data):
        if not Path(data).expanduser().exists():
            raise FileNotFoundError(f'dataset path not found: {data}')
        data = str(Path(data).expanduser())
    try:
        return datasets.load_dataset(data, split=split, streaming=streaming)
    except ValueError as e:
        if 'split' in str(e).lower():
            raise ValueError(f"dataset {data} has no split '{split}': {e}") from None
        raise
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        raise FileNotFoundError(f'dataset {data} not found (offline, or no such path / Hub id): {e}') from None


def find_columns(dataset, image_column: Optional[str] = None, label_column: Optional[str] = None) -> Tuple[str, str]:
    """The image and label column names: given ones are checked, missing ones found from the features."""
    import datasets

    features = dataset.features or {}
    names = list(features)
    if image_column is None:
        image_column = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise ValueError(f'dataset has no image column (a datasets.Image feature); columns: {names}')
    elif image_column not in features:
        raise ValueError(f"dataset has no image column '{image_column}'; columns: {names}")
    if label_column is None:
        label_column = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_column = label_column or next((n for n in _LABEL_NAMES if n in features), None)
        if label_column is None:
            raise ValueError(f'dataset has no label column (a ClassLabel feature or one of {_LABEL_NAMES}); '
                             f'columns: {names}')
    elif label_column not in features:
        raise ValueError(f"dataset has no label column '{label_column}'; columns: {names}")
    return image_column, label_column


def eval_transform(model: nn.Module) -> Callable:
    """timm's eval transform for the model's pretrained_cfg (resize, center crop, normalise)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(model=model), is_training=False)


def train_transform(model: nn.Module, cifar_style: Optional[bool] = None) -> Callable:
    """Training augmentation: CIFAR-style random crop (pad 4) + flip for small inputs, timm's otherwise."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T

    cfg = resolve_data_config(model=model)
    size = cfg['input_size'][-1]
    if cifar_style if cifar_style is not None else size <= 64:
        return T.Compose([
            T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(cfg['mean'], cfg['std']),
        ])
    return create_transform(**cfg, is_training=True)


def with_transform(dataset, transform: Callable, image_column: str, label_column: str):
    """Attach ``transform`` lazily (``set_transform``): batches of {'pixel_values', 'label'}."""
    def apply(batch):
        return {
            'pixel_values': [transform(img.convert('RGB')) for img in batch[image_column]],
            'label': batch[label_column],
        }
    dataset.set_transform(apply)
    return dataset


def _collate(rows):
    return torch.stack([r['pixel_values'] for r in rows]), torch.tensor([r['label'] for r in rows])


def make_loader(dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, **kwargs):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=_collate,
        persistent_workers=num_workers > 0, **kwargs)
