"""The held-out validation split (issue 11, item 1): ``eval_split: val`` is the last ``val_images`` rows of the
training split, no training row is a validation row, and a run never opens the test split.

The data here is a train-only dataset of solid images whose grey level encodes the row number, so the rows a
loader yields can be read back from its pixels, through the augmentation.
"""

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_blockdrop
from timm_blockdrop.data import SampleSeeds
from timm_blockdrop.train import splits
from timm_blockdrop.train.config import load_config

from test_recipes import CL_CONFIG, _lines, _recipe

N_ROWS, N_VAL = 96, 32
LEVEL = 2  # grey level of row i: LEVEL * i (distinct for up to 128 rows)


@pytest.fixture(scope='module')
def train_only_data(tmp_path_factory):
    """A dataset folder with a 'train' split only (no 'test'): CIFAR-10's columns, 32x32 solid images."""
    folder = tmp_path_factory.mktemp('train_only')
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(num_classes=10)})
    images = [Image.fromarray(np.full((32, 32, 3), LEVEL * i, np.uint8)) for i in range(N_ROWS)]
    ds = datasets.Dataset.from_dict({'img': images, 'label': [i % 10 for i in range(N_ROWS)]}, features=features)
    (folder / 'data').mkdir()
    ds.to_parquet(folder / 'data' / 'train-00000-of-00001.parquet')
    return folder


@pytest.fixture(scope='module')
def model():
    return timm_blockdrop.wrap(timm.create_model('cifar_resnet20'))


def _rows(dataset, model):
    """The row numbers of a transformed split, read back from the centre pixel (which no crop or flip moves)."""
    cfg = timm.data.resolve_data_config(model=model)
    pixels = torch.stack([dataset[i]['pixel_values'][0, 16, 16] for i in range(len(dataset))])
    grey = (pixels * cfg['std'][0] + cfg['mean'][0]) * 255
    return [int(g) for g in torch.round(grey / LEVEL)]


@pytest.fixture
def opened(monkeypatch):
    """The splits datasets.load_dataset is asked for."""
    splits, load = [], datasets.load_dataset
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: splits.append(k.get('split')) or load(*a, **k))
    return splits


def test_val_rows_are_the_last_training_rows_and_never_train(train_only_data, model, opened):
    config = load_config(CL_CONFIG, {'data': str(train_only_data), 'val_images': N_VAL})
    assert config.eval_split == 'val' and config.train_split == 'train'
    train = _rows(splits.train_split(config, model, SampleSeeds(0)), model)
    val = _rows(splits.eval_split(config, model), model)
    assert train == list(range(N_ROWS - N_VAL)) and val == list(range(N_ROWS - N_VAL, N_ROWS))
    assert not set(train) & set(val)
    assert set(opened) == {'train'}  # the test split is not opened
    # max_train_samples / max_eval_samples cut within each part, never across
    small = load_config(CL_CONFIG, {'data': str(train_only_data), 'val_images': N_VAL, 'max_train_samples': 1000,
                                    'max_eval_samples': 5})
    assert _rows(splits.train_split(small, model, SampleSeeds(0)), model) == train
    assert _rows(splits.eval_split(small, model), model) == list(range(N_ROWS - N_VAL, N_ROWS - N_VAL + 5))


def test_the_shipped_configs_hold_out_5000_training_images():
    config = load_config(CL_CONFIG)
    assert (config.eval_split, config.val_images) == ('val', 5000)
    assert splits.held_out_rows(config, 50000) == (range(45000), range(45000, 50000))
    other = load_config(CL_CONFIG, {'eval_split': 'test'})  # a split of its own: every training row trains
    assert splits.held_out_rows(other, 50000) == (range(50000), range(0))


def test_bad_val_settings_are_sentences(train_only_data, model):
    with pytest.raises(ValueError, match="'val_images' is 0"):
        load_config(CL_CONFIG, {'val_images': 0})
    with pytest.raises(ValueError, match="'val_images' must be >= 0"):
        load_config(CL_CONFIG, {'val_images': -1})
    with pytest.raises(ValueError, match='a streaming run cannot'):
        load_config(CL_CONFIG, {'streaming': True})
    config = load_config(CL_CONFIG, {'data': str(train_only_data), 'val_images': N_ROWS})
    with pytest.raises(ValueError, match=f"val_images {N_ROWS} leaves no training rows: .* has {N_ROWS}"):
        splits.train_split(config, model, SampleSeeds(0))


def test_a_run_on_data_without_a_test_split(train_only_data, tmp_path):
    """The curriculum recipe end to end on a train-only dataset: it trains on the first rows, selects on the last."""
    out = tmp_path / 'run'
    _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, '--data', train_only_data, '--epochs', '1',
            '--batch-size', '32', '--set', f'val_images={N_VAL}', '--set', 'num_workers=0',
            '--set', 'eval_batch_size=32', '--set', 'eval_at_start=true')
    start, epoch = _lines(out / 'metrics.jsonl')
    assert start['val_images'] == epoch['val_images'] == N_VAL and epoch['train_images'] == N_ROWS - N_VAL
    assert load_config(out / 'config.yaml').eval_split == 'val'
