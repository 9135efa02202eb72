"""The data of a run: the training split without its held-out rows, and the split it selects on (``eval_split:
val``: the last ``val_images`` training rows, so the test split is never read in training)."""
from typing import Tuple

from ..data import (check_labels, eval_transform, find_columns, load_split, train_transform, with_index,
                    with_seeded_transform, with_transform)
from .config import VAL_SPLIT, TrainConfig

__all__ = ['held_out_rows', 'train_split', 'eval_split']


def held_out_rows(config: TrainConfig, num_rows: int) -> Tuple[range, range]:
    """(training rows, validation rows) of a training split of ``num_rows`` rows.

    ``eval_split: val`` holds out the last ``val_images`` rows for validation (model selection never sees the
    test split); any other eval_split is a split of its own and every row trains.
    """
    if config.eval_split != VAL_SPLIT:
        return range(num_rows), range(0)
    if config.val_images >= num_rows:
        raise ValueError(f"val_images {config.val_images} leaves no training rows: the '{config.train_split}' split "
                         f"of {config.data} has {num_rows}")
    return range(num_rows - config.val_images), range(num_rows - config.val_images, num_rows)


def train_split(config: TrainConfig, model, seeds):
    """The map-style training split (without the held-out validation rows): rows of {'pixel_values', 'label',
    'seed'}, augmented per sample seed."""
    dataset = load_split(config.data, config.train_split)
    image_column, label_column = find_columns(dataset, config.image_column, config.label_column)
    rows, _ = held_out_rows(config, len(dataset))
    if config.max_train_samples is not None:
        rows = rows[:config.max_train_samples]
    if len(rows) < len(dataset):
        dataset = dataset.select(rows)
    check_labels(dataset, label_column, model.num_classes, config.data)
    return with_seeded_transform(with_index(dataset), train_transform(model), image_column, label_column, seeds)


def eval_split(config: TrainConfig, model):
    """The evaluation split through the model's eval transform: rows of {'pixel_values', 'label'}; for
    ``eval_split: val`` the rows held out at the end of the training split."""
    held_out = config.eval_split == VAL_SPLIT
    dataset = load_split(config.data, config.train_split if held_out else config.eval_split)
    image_column, label_column = find_columns(dataset, config.image_column, config.label_column)
    rows = held_out_rows(config, len(dataset))[1] if held_out else range(len(dataset))
    if config.max_eval_samples is not None:
        rows = rows[:config.max_eval_samples]
    if len(rows) < len(dataset):
        dataset = dataset.select(rows)
    check_labels(dataset, label_column, model.num_classes, config.data)
    return with_transform(dataset, eval_transform(model), image_column, label_column)
