"""Tiny image-classification datasets written by the tests themselves (HF ``datasets`` layouts, offline)."""
import io
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
from PIL import Image


def jpeg_bytes(size=(8, 8), mode: str = 'RGB', seed: int = 0) -> bytes:
    """A random-noise JPEG of ``size`` (width, height) in ``mode`` (RGB, L or CMYK)."""
    rng = np.random.default_rng(seed)
    channels = {'L': 1, 'RGB': 3, 'CMYK': 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=None if channels != 4 else 'CMYK')
    out = io.BytesIO()
    image.save(out, format='JPEG')
    return out.getvalue()


def truncated(data: bytes) -> bytes:
    """The image cut to half its bytes, as a failed download or a full disk leaves it."""
    return data[:len(data) // 2]


def tiny_dataset(labels: Sequence, num_classes: Optional[int] = 10, images: Optional[Sequence[bytes]] = None,
                 image_column: str = 'image', label_column: str = 'label') -> datasets.Dataset:
    """One row per label: an 8x8 JPEG (or ``images[i]``) and the label, as a ClassLabel of ``num_classes`` classes
    (None: the labels' own type, e.g. int64 or string)."""
    images = images if images is not None else [jpeg_bytes(seed=i) for i in range(len(labels))]
    label_feature = (datasets.ClassLabel(num_classes=num_classes) if num_classes is not None
                     else datasets.Value('string' if isinstance(labels[0], str) else 'int64'))
    features = datasets.Features({image_column: datasets.Image(), label_column: label_feature})
    rows = {image_column: [{'bytes': b, 'path': None} for b in images], label_column: list(labels)}
    return datasets.Dataset.from_dict(rows, features=features)


def write_parquet(dataset: datasets.Dataset, folder, split: str = 'test') -> Path:
    """``folder/data/{split}-00000-of-00001.parquet``, the Hub's parquet layout; returns ``folder``."""
    folder = Path(folder)
    (folder / 'data').mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / 'data' / f'{split}-00000-of-00001.parquet'))
    return folder


def write_image_folder(folder, images_by_label, split: str = 'test') -> Path:
    """``folder/{split}/{label}/{i}.jpg`` (datasets' imagefolder layout: the label is the folder name)."""
    folder = Path(folder)
    for label, images in images_by_label.items():
        (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(images):
            (folder / split / str(label) / f'{i}.jpg').write_bytes(data)
    return folder
