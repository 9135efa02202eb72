"""Images from HF ``datasets`` (a Hub id or a local folder) through the model's own timm transforms.

Normalisation, size, crop and interpolation come from the model's ``pretrained_cfg`` via
``timm.data.resolve_data_config``; columns are found from the dataset's features (a ``datasets.Image`` column
and a ``ClassLabel`` column) unless given.

Checks offered to eval and the recipes (each raises ValueError / FileNotFoundError with one sentence that names
the dataset, split and column, and says what to do):

- ``check_labels(dataset, label_column, num_classes, data)``: labels are integer class indices in
  ``[0, num_classes)`` (a ClassLabel with no more classes than the model); reads the label column only. Call it
  after ``find_columns`` and any ``select``. ``streaming_train_split(..., num_classes=N)`` checks a stream.
- ``find_columns(dataset, image_column, label_column, data)``: a missing column, an image column that holds no
  images, or a label column that holds no integer class indices (strings, images) names the column and the
  columns there are.
- ``load_split``: a missing path or split, or a Hub id that is not cached while offline, is one sentence.
- ``make_loader(..., data=PATH)`` / ``make_train_loader(..., data=PATH)``: an image that cannot be decoded raises
  ``CorruptImageError`` (a ValueError) naming the data, the split, the row and the image's file when stored;
  nothing is skipped silently. Pass ``data`` so the message names the path (else the dataset's name).
"""
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from PIL import Image
from torch import nn

__all__ = ['load_split', 'find_columns', 'check_labels', 'eval_transform', 'train_transform', 'with_transform',
           'make_loader', 'CorruptImageError']

_LABEL_NAMES = ('label', 'labels', 'fine_label', 'target', 'class')


def _looks_like_path(data: str) -> bool:
    """A local path rather than a Hub id ('name' or 'org/name')."""
    return data.startswith(('.', '/', '~')) or data.count('/') > 1 or Path(data).expanduser().exists()


def load_split(data: str, split: str = 'test', streaming: bool = False):
    """``datasets.load_dataset(data, split=split)`` with clear errors for a missing path or split, and for a Hub id
    that is neither cached nor reachable (offline)."""
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
    except ConnectionError:  # datasets' "Couldn't reach 'ID' on the Hub (OfflineModeIsEnabled)" and the like
        why = ('HF_HUB_OFFLINE / HF_DATASETS_OFFLINE forbid downloading it' if datasets.config.HF_HUB_OFFLINE
               else 'the Hub could not be reached')
        how = ('and a streaming split always needs the Hub' if streaming
               else f'run once online to cache it (in {datasets.config.HF_DATASETS_CACHE})')
        raise FileNotFoundError(
            f"Hub dataset {data} is not in the local datasets cache and {why}: {how}, or download it where the Hub is "
            f"reachable (`hf download {data} --repo-type dataset --local-dir DIR`) and pass the folder DIR as the "
            f"data path") from None


def find_columns(dataset, image_column: Optional[str] = None, label_column: Optional[str] = None,
                 data: Optional[str] = None) -> Tuple[str, str]:
    """The image and label column names: given ones are checked (they exist; the image column is a
    ``datasets.Image``, the label column integer class indices), missing ones found from the features.

    A wrong column is one ValueError sentence naming the dataset (``data``), the column and the columns there are.
    """
    import datasets

    where = _describe(dataset, data)
    if dataset.features is None and image_column and label_column:  # a stream that does not know its features
        return image_column, label_column
    features = dataset.features or {}
    names = list(features)
    images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    if image_column is None:
        image_column = images[0] if images else None
        if image_column is None:
            raise ValueError(f'{where} has no image column (a datasets.Image feature); columns: {names}')
    elif image_column not in features:
        raise ValueError(f"{where} has no image column '{image_column}'; columns: {names}"
                         + (f' (image columns: {images})' if images else ''))
    elif image_column not in images:
        raise ValueError(f"{where}: column '{image_column}' holds {_kind(features[image_column])} values, not images; "
                         f"name a datasets.Image column (image columns: {images}; columns: {names})")
    if label_column is None:
        label_column = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_column = label_column or next((n for n in _LABEL_NAMES if n in features), None)
        if label_column is None:
            raise ValueError(f'{where} has no label column (a ClassLabel feature or one of {_LABEL_NAMES}); '
                             f'columns: {names}')
    elif label_column not in features:
        raise ValueError(f"{where} has no label column '{label_column}'; columns: {names}")
    if not isinstance(features[label_column], datasets.ClassLabel):
        _check_label_feature(features[label_column], label_column, names, where)
    return image_column, label_column


def _kind(feature) -> str:
    """'int64', 'string', 'Image', 'ClassLabel', ... for messages."""
    import datasets
    return feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__


def _describe(dataset, data: Optional[str]) -> str:
    """'dataset DATA split SPLIT' for messages (either part left out when unknown)."""
    split = getattr(dataset, 'split', None)
    return ' '.join(part for part in (f'dataset {data}' if data else 'dataset',
                                      f"split '{split}'" if split else '') if part)


def check_labels(dataset, label_column: str, num_classes: int, data: Optional[str] = None) -> None:
    """Refuse a split whose labels a ``num_classes``-way classifier cannot score (ValueError, one sentence).

    A ``ClassLabel`` column must not have more classes than the model; the labels must be integers in
    ``[0, num_classes)`` (-1 is ``datasets``' "no label"). A map-style split is checked row by row from its label
    column alone (Arrow, no image decoding: milliseconds for 50,000 rows); a streaming one by its features here
    and row by row in ``with_transform`` / ``with_seeded_transform`` when they are given ``num_classes``.
    """
    import datasets
    import pyarrow.compute as pc

    where = _describe(dataset, data)
    features = dataset.features or {}
    feature = features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        if feature.num_classes > num_classes:
            raise ValueError(f"{where} has {feature.num_classes} classes in its label column '{label_column}' but "
                             f"the model predicts {num_classes}: use a model trained on this dataset, or the "
                             f"dataset the model was trained on")
    elif feature is not None:
        _check_label_feature(feature, label_column, list(features), where)
    if isinstance(dataset, datasets.IterableDataset):
        return
    labels = dataset.select_columns([label_column]).with_format('arrow')[label_column]
    bad = pc.or_(pc.less(labels, 0), pc.greater_equal(labels, num_classes))
    count = pc.sum(bad).as_py() or 0
    if count:
        values = sorted(pc.unique(labels.filter(bad)).to_pylist())
        shown = ', '.join(map(str, values[:5])) + (f', ... ({len(values)} distinct)' if len(values) > 5 else '')
        hint = ' (-1 means "no label": use a labelled split)' if values == [-1] else ''
        raise ValueError(f"{where}: {count} of {len(labels)} rows have labels outside [0, {num_classes}) in column "
                         f"'{label_column}' (values {shown}){hint}; the model predicts {num_classes} classes")


def _check_label_feature(feature, label_column: str, names, where: str) -> None:
    """A label column must hold integer class indices (a ClassLabel or an integer Value)."""
    import datasets

    if isinstance(feature, datasets.Value) and feature.dtype.startswith(('int', 'uint')):
        return
    kind = _kind(feature)
    hint = (f"; to map names to indices, use dataset.class_encode_column('{label_column}')"
            if isinstance(feature, datasets.Value) and feature.dtype in ('string', 'large_string') else '')
    raise ValueError(f"{where}: label column '{label_column}' holds {kind} values, not integer class indices; "
                     f"name an integer or ClassLabel column (columns: {names}){hint}")


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


class CorruptImageError(ValueError):
    """An image of the dataset that cannot be decoded (truncated, not an image, a decompression bomb)."""

    def __init__(self, message: str):
        # torch re-raises a DataLoader worker's error as type(e)('Caught ... Original Traceback ...'): keep the sentence
        marker = f'{type(self).__name__}: '
        if message.startswith('Caught ') and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


# what PIL raises for an image it cannot decode (a truncated file: OSError; a broken PNG chunk: SyntaxError)
_DECODE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


def _corrupt(where: str, row: str, path: Optional[str], error: BaseException) -> CorruptImageError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    file = f' (file {path})' if path else ''
    return CorruptImageError(f'{where}: the image of {row}{file} cannot be decoded ({first}); repair or remove it '
                             f'(e.g. dataset.filter), or re-download the dataset, and run again')


class _NamedRows(torch.utils.data.Dataset):
    """A map-style dataset whose undecodable image raises ``CorruptImageError`` naming its row, not PIL's traceback.

    Batches are read as usual (``__getitems__``); only after a decoding error are the batch's rows read one by one
    to find the bad one.
    """

    def __init__(self, dataset, data: Optional[str] = None):
        self.dataset, self.data = dataset, data

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        try:
            return self.dataset.__getitems__(list(indices))
        except _DECODE_ERRORS:
            for index in indices:
                try:
                    self.dataset[int(index)]
                except _DECODE_ERRORS as e:
                    raise _corrupt(_describe(self.dataset, self.data or _dataset_name(self.dataset)),
                                   f'row {int(index)}', self._path(int(index)), e) from None
            raise

    def _path(self, index: int) -> Optional[str]:
        """The file name stored with the row's image (image folders; some parquet sets), read without decoding."""
        import datasets
        row = self.dataset.with_format('arrow')[index]
        for name, feature in (self.dataset.features or {}).items():
            if isinstance(feature, datasets.Image):
                value = row.column(name)[0].as_py()
                if isinstance(value, dict) and value.get('path'):
                    return value['path']
        return None


def _dataset_name(dataset) -> Optional[str]:
    info = getattr(dataset, 'info', None)
    return getattr(info, 'dataset_name', None)


def _named_rows(dataset, data: Optional[str]):
    import datasets
    return dataset if isinstance(dataset, datasets.IterableDataset) else _NamedRows(dataset, data)


def _collate(rows):
    return torch.stack([r['pixel_values'] for r in rows]), torch.tensor([r['label'] for r in rows])


def make_loader(dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, data: Optional[str] = None,
                **kwargs):
    """Batches of (images, labels) from ``with_transform`` rows; an undecodable image raises ``CorruptImageError``
    naming ``data`` (the dataset's path or Hub id, for the message), the split and the row."""
    return torch.utils.data.DataLoader(
        _named_rows(dataset, data), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        collate_fn=_collate, persistent_workers=num_workers > 0, **kwargs)


# ---- training data: per-sample seeds (added with the training recipes) ----
#
# All randomness of a training sample (its augmentation and the Bernoulli draws of its policy) comes from seeds
# that are a function of (run seed, epoch, sample index) alone. Batches are then the same whatever the number of
# processes and whether or not the run was interrupted and resumed: no RNG state has to follow a prefetching
# data loader around.

__all__ += ['INDEX_COLUMN', 'SampleSeeds', 'with_index', 'with_seeded_transform', 'make_train_loader',
            'streaming_train_split']

INDEX_COLUMN = '__index__'


class SampleSeeds:
    """Two 32-bit seeds per sample (augmentation, policy), from ``SeedSequence((seed, stream, epoch, index))``.

    ``stream`` separates otherwise equal indices (e.g. the process of a streaming run, whose sample indices count
    per process). Call ``set_epoch`` before each epoch's data loader is iterated.
    """

    def __init__(self, seed: int, stream: int = 0):
        if int(seed) < 0 or int(stream) < 0:
            raise ValueError(f'seed and stream must be >= 0, got {seed}, {stream}')
        self.seed, self.stream, self.epoch = int(seed), int(stream), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, index: int) -> Tuple[int, int]:
        import numpy as np
        aug, policy = np.random.SeedSequence((self.seed, self.stream, self.epoch, int(index))).generate_state(2)
        return int(aug), int(policy)


def with_index(dataset):
    """The dataset with a column ``__index__`` holding each row's position (its identity for ``SampleSeeds``)."""
    import datasets

    if INDEX_COLUMN in (dataset.column_names or []):
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(lambda batch, idx: {INDEX_COLUMN: idx}, with_indices=True, batched=True)
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def _rgb(image):
    """A PIL RGB image from a decoded image or an undecoded {'bytes', 'path'} dict."""
    if isinstance(image, dict):
        import io
        image = Image.open(io.BytesIO(image['bytes']) if image.get('bytes') else image['path'])
    return image.convert('RGB')


def _seeded(transform: Callable, image, seed: int):
    """``transform(image)`` with torch's and Python's global RNGs seeded by ``seed`` (and restored after)."""
    import random

    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            return transform(image)
        finally:
            random.setstate(py_state)


def with_seeded_transform(dataset, transform: Callable, image_column: str, label_column: str, seeds: SampleSeeds):
    """Like ``with_transform``, but each image is augmented under RNGs seeded by ``seeds(index)`` and each row
    also carries its policy seed: rows of {'pixel_values', 'label', 'seed'}.

    The dataset needs the ``__index__`` column of ``with_index``. Map-style datasets get the transform through
    ``set_transform`` (lazily, in the data loader's workers); streaming ones through ``map``.
    """
    import datasets

    names = dataset.column_names or list(dataset.features or {})
    if names and INDEX_COLUMN not in names:  # (a streaming dataset after map() may not know its columns)
        raise ValueError(f'with_seeded_transform needs the {INDEX_COLUMN} column of with_index(); columns: {names}')

    def apply(batch):
        pixels, policy_seeds = [], []
        for index, image in zip(batch[INDEX_COLUMN], batch[image_column]):
            aug_seed, policy_seed = seeds(index)
            try:
                image = _rgb(image)
            except _DECODE_ERRORS as e:  # an undecoded (streamed) image; a map-style one fails in _NamedRows
                raise _corrupt(_describe(dataset, _dataset_name(dataset)), f'streamed sample {index} of this process',
                               image.get('path') if isinstance(image, dict) else None, e) from None
            pixels.append(_seeded(transform, image, aug_seed))
            policy_seeds.append(policy_seed)
        return {'pixel_values': pixels, 'label': batch[label_column], 'seed': policy_seeds}

    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(apply, batched=True, remove_columns=names or [INDEX_COLUMN, image_column, label_column])
    dataset.set_transform(apply)
    return dataset


def _collate_train(rows):
    return {
        'pixel_values': torch.stack([r['pixel_values'] for r in rows]),
        'label': torch.tensor([r['label'] for r in rows]),
        'seed': torch.tensor([r['seed'] for r in rows], dtype=torch.long),
    }


def make_train_loader(dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0, drop_last: bool = True,
                      data: Optional[str] = None):
    """Batches of {'pixel_values', 'label', 'seed'} from ``with_seeded_transform`` rows; an undecodable image raises
    ``CorruptImageError`` naming ``data``, the split and the row (as ``make_loader``).

    Workers are not persistent: they are forked at each epoch, so they see the epoch set on ``SampleSeeds``.
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        shuffle = False  # a streaming dataset shuffles itself (IterableDataset.shuffle)
    return torch.utils.data.DataLoader(
        _named_rows(dataset, data), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        collate_fn=_collate_train, drop_last=drop_last, persistent_workers=False)


def streaming_train_split(data: str, split: str, image_column: Optional[str], label_column: Optional[str],
                          seed: int, shuffle_buffer: int, process_index: int = 0, num_processes: int = 1,
                          max_samples: Optional[int] = None, num_classes: Optional[int] = None):
    """A streaming split for training: (dataset, image column, label column, number of rows).

    Images stay undecoded until the transform (skipping rows on resume costs no decoding); rows are shuffled in a
    buffer of ``shuffle_buffer`` (reshuffled by ``set_epoch``), optionally cut to ``max_samples``, split between
    processes (``datasets.distributed.split_dataset_by_node``) and indexed per process (``with_index``).
    Given ``num_classes``, the label column is checked (``check_labels``) and each row's label as it streams by.
    """
    import datasets
    from datasets.distributed import split_dataset_by_node

    dataset = load_split(data, split, streaming=True)
    image_column, label_column = find_columns(dataset, image_column, label_column, data)
    total = None
    if dataset.info.splits and split in dataset.info.splits:
        total = dataset.info.splits[split].num_examples
    if max_samples is not None:
        dataset = dataset.take(max_samples)
        total = max_samples if total is None else min(total, max_samples)
    if total is None:
        raise ValueError(f'streaming dataset {data} does not say how many rows its {split} split has; '
                         f'set max_train_samples')
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if num_classes is not None:
        check_labels(dataset, label_column, num_classes, data)
        dataset = _checking_labels(dataset, label_column, num_classes, data)
    dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
    dataset = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    return with_index(dataset), image_column, label_column, total


def _checking_labels(dataset, label_column: str, num_classes: int, data: Optional[str]):
    """A streaming dataset that raises ``check_labels``' ValueError at the first label outside [0, num_classes)."""
    where = _describe(dataset, data)

    def check(batch):
        bad = sorted({v for v in batch[label_column] if not 0 <= v < num_classes})
        if bad:
            raise ValueError(f"{where}: labels outside [0, {num_classes}) in column '{label_column}' (values "
                             f"{', '.join(map(str, bad[:5]))}); the model predicts {num_classes} classes")
        return {}

    return dataset.map(check, batched=True, features=dataset.features)
