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


# ---- a tiny ImageNet-shaped dataset (issue 14 item 1): ILSVRC/imagenet-1k's `image` / `label` columns ----

# (width, height, mode, format): varied sizes and aspect ratios, and the odd modes real ImageNet holds
# (grayscale and CMYK JPEGs; an RGBA PNG stands for its few PNG files)
IMAGENET_LIKE = [(500, 375, 'RGB', 'JPEG'), (375, 500, 'RGB', 'JPEG'), (160, 120, 'L', 'JPEG'),
                 (333, 500, 'CMYK', 'JPEG'), (640, 480, 'RGB', 'JPEG'), (96, 300, 'RGB', 'JPEG'),
                 (300, 300, 'RGBA', 'PNG'), (250, 180, 'L', 'JPEG')]
SYNSETS = ['n01440764', 'n01443537', 'n01484850', 'n01491361']  # the first ImageNet-1k classes (labels 0-3)


def image_bytes(width: int, height: int, mode: str, fmt: str, seed: int) -> bytes:
    """A smooth random image (cheap to encode, unlike noise) of the size, mode and file format given."""
    rng = np.random.default_rng(seed)
    channels = {'L': 1, 'RGB': 3, 'CMYK': 4, 'RGBA': 4}[mode]
    corners = rng.integers(0, 256, (2, 2, channels)).astype(np.uint8)
    small = Image.fromarray(corners[..., 0] if channels == 1 else corners, mode=mode)
    out = io.BytesIO()
    small.resize((width, height), Image.BILINEAR).save(out, format=fmt, quality=85)
    return out.getvalue()


def imagenet_like(num_images: int = 24, seed: int = 0) -> datasets.Dataset:
    """``num_images`` rows cycling through IMAGENET_LIKE, labels cycling through the first classes of a
    1000-class ClassLabel (as imagenet-1k's)."""
    specs = [IMAGENET_LIKE[i % len(IMAGENET_LIKE)] for i in range(num_images)]
    images = [image_bytes(*spec, seed=seed * 10_000 + i) for i, spec in enumerate(specs)]
    labels = [i % len(SYNSETS) for i in range(num_images)]
    names = [f"{SYNSETS[y]}_{i}.{'png' if fmt == 'PNG' else 'JPEG'}"
             for i, (y, (_, _, _, fmt)) in enumerate(zip(labels, specs))]
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(num_classes=1000)})
    return datasets.Dataset.from_dict(
        {'image': [{'bytes': b, 'path': name} for b, name in zip(images, names)], 'label': labels}, features=features)


def write_imagenet_parquet(folder, num_train: int = 24, num_val: int = 8, shards: int = 2) -> Path:
    """``folder/data/{train,validation}-0000k-of-0000n.parquet`` shards, as the Hub's imagenet-1k parquet export."""
    folder = Path(folder)
    (folder / 'data').mkdir(parents=True, exist_ok=True)
    for split, n, count in (('train', num_train, shards), ('validation', num_val, 1)):
        dataset = imagenet_like(n, seed=0 if split == 'train' else 1)
        for k in range(count):
            dataset.shard(count, k, contiguous=True).to_parquet(
                str(folder / 'data' / f'{split}-{k:05d}-of-{count:05d}.parquet'))
    return folder


def write_imagenet_folder(folder, num_train: int = 24, num_val: int = 8) -> Path:
    """``folder/{train,validation}/{synset}/{file}``: the image-folder layout (labels are the synset folders)."""
    folder = Path(folder)
    for split, n in (('train', num_train), ('validation', num_val)):
        dataset = imagenet_like(n, seed=0 if split == 'train' else 1).cast_column('image', datasets.Image(decode=False))
        for row in dataset:
            synset = row['image']['path'].split('_')[0]
            (folder / split / synset).mkdir(parents=True, exist_ok=True)
            (folder / split / synset / row['image']['path']).write_bytes(row['image']['bytes'])
    return folder
