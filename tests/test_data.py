"""data.py: bad input pipelines give one sentence, never a silently wrong number (issue 13 items 3, 8, 9, 10)."""
import datasets
import pytest

from timm_blockdrop.data import CorruptImageError, check_labels, load_split
from timm_blockdrop.tools import cli

from conftest import RESNET_FILES
from tiny_data import jpeg_bytes, tiny_dataset, truncated, write_image_folder, write_parquet


@pytest.fixture(autouse=True)
def empty_datasets_cache(tmp_path, monkeypatch):
    """An empty HF datasets cache, offline (so `uoft-cs/cifar10` is certainly not in it); the tiny datasets the
    tests load are cached there too, not in the user's cache."""
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', tmp_path / 'hf-datasets-cache')
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    return tmp_path / 'hf-datasets-cache'


# ---- issue 13 item 3: labels outside [0, num_classes) ----

def test_all_unlabelled_rows_are_refused():
    with pytest.raises(ValueError, match=r"8 of 8 rows have labels outside \[0, 10\) in column 'label' "
                                         r"\(values -1\) \(-1 means \"no label\""):
        check_labels(tiny_dataset([-1] * 8), 'label', 10, 'tiny')


def test_a_100_class_set_against_a_10_class_model_is_refused():
    with pytest.raises(ValueError, match=r"dataset tiny has 100 classes in its label column 'label' but the model "
                                         r"predicts 10"):
        check_labels(tiny_dataset([3, 50, 99], num_classes=100), 'label', 10, 'tiny')
    # integer labels without a ClassLabel: the rows are counted and a few values named
    with pytest.raises(ValueError, match=r"3 of 5 rows have labels outside \[0, 10\) in column 'label' "
                                         r"\(values 10, 50, 99\)"):
        check_labels(tiny_dataset([1, 10, 50, 99, 2], num_classes=None), 'label', 10, 'tiny')


def test_string_labels_are_refused():
    with pytest.raises(ValueError, match=r"label column 'label' holds string values, not integer class indices; "
                                         r"name an integer or ClassLabel column \(columns: \['image', 'label'\]\)"):
        check_labels(tiny_dataset(['cat', 'dog'], num_classes=None), 'label', 10, 'tiny')


def test_good_labels_pass_without_decoding_images():
    """Only the label column is read: images that cannot be decoded do not matter (and 50,000 rows are quick)."""
    check_labels(tiny_dataset([0, 9, 4], images=[b'not a jpeg'] * 3), 'label', 10)
    check_labels(tiny_dataset(list(range(10)) * 5000, images=[b'x'] * 50000), 'label', 10)
    # the rows of a selection are checked, not those of the whole table
    check_labels(tiny_dataset([-1, 0, 1, -1]).select([1, 2]), 'label', 10)
    with pytest.raises(ValueError, match='1 of 2 rows'):
        check_labels(tiny_dataset([-1, 0, 1, -1]).select([1, 3]), 'label', 10)


def test_streaming_split_checks_labels_as_they_stream(tmp_path):
    from timm_blockdrop.data import streaming_train_split
    folder = write_parquet(tiny_dataset([0, 1, 12, 3], num_classes=None), tmp_path / 'tiny', split='train')
    stream, *_ = streaming_train_split(str(folder), 'train', None, 'label', seed=0, shuffle_buffer=4,
                                       max_samples=4, num_classes=10)
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\) in column 'label' \(values 12\)"):
        list(stream)
    with pytest.raises(ValueError, match='has 100 classes'):
        write_parquet(tiny_dataset([0], num_classes=100), tmp_path / 'c100', split='train')
        streaming_train_split(str(tmp_path / 'c100'), 'train', None, None, seed=0, shuffle_buffer=4,
                              max_samples=1, num_classes=10)


def _eval(capsys, folder, *extra):
    code = cli.main(['eval', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]),
                     '--data', str(folder), '--quiet', *extra])
    err = capsys.readouterr().err.replace('\r', '\n').strip().splitlines()
    return code, err[-1] if err else ''


def test_eval_refuses_unlabelled_split(tmp_path, capsys):
    folder = write_parquet(tiny_dataset([-1] * 6), tmp_path / 'unlabelled')
    code, err = _eval(capsys, folder)
    assert code == 2 and err.startswith('blockdrop eval: error: dataset '), err
    assert "6 of 6 rows have labels outside [0, 10) in column 'label' (values -1)" in err


def test_recipe_splits_refuse_bad_labels(tmp_path):
    import timm
    from timm_blockdrop.data import SampleSeeds
    from timm_blockdrop.train.splits import eval_split, train_split
    from timm_blockdrop.train.config import TrainConfig
    folder = write_parquet(tiny_dataset([0, 1, 12, 3, 4, 5], num_classes=None), tmp_path / 'tiny', split='train')
    model = timm.create_model('blockdrop_cifar_resnet20')
    config = TrainConfig(data=str(folder), val_images=2)
    with pytest.raises(ValueError, match=r"1 of 4 rows have labels outside \[0, 10\)"):
        train_split(config, model, SampleSeeds(0))
    eval_split(config, model)  # the held-out rows 4, 5 are fine


# ---- issue 13 item 8: a Hub dataset id while offline ----



@pytest.mark.parametrize('streaming', [False, True])
def test_hub_id_offline_is_one_sentence(empty_datasets_cache, streaming):
    with pytest.raises(FileNotFoundError, match=r"^Hub dataset uoft-cs/cifar10 is not in the local datasets cache and "
                                                r"HF_HUB_OFFLINE / HF_DATASETS_OFFLINE forbid downloading it: .*"
                                                r"`hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR`"):
        load_split('uoft-cs/cifar10', 'test', streaming=streaming)


def test_eval_with_hub_id_offline(empty_datasets_cache, capsys):
    code, err = _eval(capsys, 'uoft-cs/cifar10')
    assert code == 2 and err.startswith('blockdrop eval: error: Hub dataset uoft-cs/cifar10 is not in the local'), err


# ---- issue 13 item 9: one truncated image names its split, row and file ----

def _with_truncated_row(n=6, bad=3):
    images = [jpeg_bytes(size=(32, 32), seed=i) for i in range(n)]
    images[bad] = truncated(images[bad])
    return tiny_dataset(list(range(n)), images=images)


def test_eval_names_the_truncated_image(tmp_path, capsys):
    folder = write_parquet(_with_truncated_row(), tmp_path / 'tiny')
    code, err = _eval(capsys, folder, '--batch-size', '4')
    assert code == 2, err
    assert err.startswith(f"blockdrop eval: error: dataset {folder} split 'test': the image of row 3 cannot be decoded "
                          f"("), err
    assert 'repair or remove it' in err


def test_image_folder_names_the_file(tmp_path):
    from timm_blockdrop.data import eval_transform, find_columns, make_loader, with_transform
    import timm
    good = [jpeg_bytes(size=(10, 14), seed=i) for i in range(3)]
    folder = write_image_folder(tmp_path / 'folder', {'cat': good, 'dog': [good[0], truncated(good[1])]})
    dataset = load_split(str(folder), 'test')
    image_column, label_column = find_columns(dataset)
    with_transform(dataset, eval_transform(timm.create_model('cifar_resnet20')), image_column, label_column)
    with pytest.raises(CorruptImageError, match=rf"^dataset {folder} split 'test': the image of row 4 \(file "
                                                rf"{folder}/test/dog/1.jpg\) cannot be decoded"):
        list(make_loader(dataset, 2, data=str(folder)))


@pytest.mark.parametrize('num_workers', [0, 1])
def test_training_loaders_name_the_truncated_image(tmp_path, num_workers):
    """Map-style and streaming, in the main process and in a DataLoader worker: one sentence, no traceback."""
    import timm
    from timm_blockdrop.data import (SampleSeeds, make_train_loader, streaming_train_split, train_transform, with_index,
                                     with_seeded_transform)
    folder = write_parquet(_with_truncated_row(), tmp_path / 'tiny', split='train')
    model = timm.create_model('cifar_resnet20')
    dataset = load_split(str(folder), 'train')
    rows = with_seeded_transform(with_index(dataset), train_transform(model), 'image', 'label', SampleSeeds(0))
    loader = make_train_loader(rows, 2, shuffle=False, num_workers=num_workers, data=str(folder))
    with pytest.raises(CorruptImageError) as info:
        list(loader)
    assert str(info.value).startswith(f"dataset {folder} split 'train': the image of row 3 cannot be decoded"), info.value
    stream, image_column, label_column, _ = streaming_train_split(str(folder), 'train', None, None, seed=0,
                                                                  shuffle_buffer=1, max_samples=6, num_classes=10)
    rows = with_seeded_transform(stream, train_transform(model), image_column, label_column, SampleSeeds(0))
    with pytest.raises(CorruptImageError) as info:
        list(make_train_loader(rows, 2, num_workers=num_workers, data=str(folder)))
    assert ' the image of streamed sample 3 of this process cannot be decoded (' in str(info.value)
    assert '\n' not in str(info.value)


# ---- issue 13 item 10: bad column names and string labels ----

def test_label_column_naming_the_images(tmp_path, capsys):
    folder = write_parquet(tiny_dataset([0, 1], image_column='img'), tmp_path / 'tiny')
    code, err = _eval(capsys, folder, '--label-column', 'img')
    assert code == 2 and err == (f"blockdrop eval: error: dataset {folder} split 'test': label column 'img' holds Image "
                                 f"values, not integer class indices; name an integer or ClassLabel column (columns: "
                                 f"['img', 'label'])"), err
    from timm_blockdrop.data import find_columns  # find_columns itself refuses it, before check_labels
    with pytest.raises(ValueError, match="label column 'img' holds Image values"):
        find_columns(tiny_dataset([0], image_column='img'), label_column='img')


def test_image_column_naming_the_labels(tmp_path, capsys):
    folder = write_parquet(tiny_dataset([0, 1], image_column='img'), tmp_path / 'tiny')
    code, err = _eval(capsys, folder, '--image-column', 'label')
    assert code == 2 and err == (f"blockdrop eval: error: dataset {folder} split 'test': column 'label' holds "
                                 f"ClassLabel values, not images; name a datasets.Image column (image columns: "
                                 f"['img']; columns: ['img', 'label'])"), err


def test_a_column_that_does_not_exist(tmp_path, capsys):
    folder = write_parquet(tiny_dataset([0, 1]), tmp_path / 'tiny')
    code, err = _eval(capsys, folder, '--label-column', 'fine_label')
    assert code == 2 and err == (f"blockdrop eval: error: dataset {folder} split 'test' has no label column "
                                 f"'fine_label'; columns: ['image', 'label']"), err
    code, err = _eval(capsys, folder, '--image-column', 'pixels')
    assert code == 2 and err.endswith("has no image column 'pixels'; columns: ['image', 'label'] (image columns: "
                                      "['image'])"), err


def test_string_labels_found_by_name(tmp_path, capsys):
    """A 'label' column of class names (found by its name, there is no ClassLabel) is refused before any image."""
    from timm_blockdrop.data import find_columns
    folder = write_parquet(tiny_dataset(['cat', 'dog'], num_classes=None), tmp_path / 'tiny')
    code, err = _eval(capsys, folder)
    assert code == 2 and err.startswith(f"blockdrop eval: error: dataset {folder} split 'test': label column 'label' "
                                        f"holds string values, not integer class indices"), err
    with pytest.raises(ValueError, match="label column 'label' holds string values"):
        find_columns(tiny_dataset(['cat'], num_classes=None))


# ---- issue 14 item 1 groundwork: an ImageNet-shaped dataset through timm's 224 px transforms ----

@pytest.fixture(scope='module')
def imagenet_like_folders(tmp_path_factory):
    """The same tiny ImageNet-shaped data as parquet shards and as an image folder."""
    from tiny_data import write_imagenet_folder, write_imagenet_parquet
    root = tmp_path_factory.mktemp('imagenet_like')
    return {'parquet': write_imagenet_parquet(root / 'parquet'), 'folder': write_imagenet_folder(root / 'folder')}


@pytest.mark.parametrize('layout', ['parquet', 'folder'])
@pytest.mark.parametrize('streaming', [False, True])
def test_imagenet_shaped_data_through_224px_transforms(imagenet_like_folders, layout, streaming):
    """Varied sizes, grayscale, CMYK and RGBA images come out as 3 x 224 x 224 batches, train and eval."""
    import timm
    import torch
    from timm_blockdrop.data import (SampleSeeds, eval_transform, find_columns, make_loader, make_train_loader,
                                     streaming_train_split, train_transform, with_index, with_seeded_transform,
                                     with_transform)
    from tiny_data import IMAGENET_LIKE
    folder = str(imagenet_like_folders[layout])
    model = timm.create_model('resnet18')  # only its pretrained_cfg matters: 224 px, bicubic, ImageNet mean/std
    assert model.pretrained_cfg['input_size'] == (3, 224, 224)
    if streaming:
        train, image_column, label_column, rows = streaming_train_split(folder, 'train', None, None, seed=0,
                                                                        shuffle_buffer=8, num_classes=1000,
                                                                        max_samples=24)  # local: no row count
    else:
        train = load_split(folder, 'train')
        image_column, label_column = find_columns(train, data=folder)
        check_labels(train, label_column, 1000, folder)
        train, rows = with_index(train), len(train)
    assert (image_column, label_column, rows) == ('image', 'label', 24)
    train = with_seeded_transform(train, train_transform(model), image_column, label_column, SampleSeeds(0))
    batches = list(make_train_loader(train, 8, shuffle=not streaming, data=folder))
    assert len(batches) == 3
    for batch in batches:
        assert batch['pixel_values'].shape == (8, 3, 224, 224) and batch['pixel_values'].dtype == torch.float32
        assert batch['label'].tolist() and all(0 <= y < 4 for y in batch['label'].tolist())
    labels = sorted(y for b in batches for y in b['label'].tolist())
    assert labels == sorted(i % 4 for i in range(24))  # every row once, whatever the order
    assert {mode for _, _, mode, _ in IMAGENET_LIKE} == {'RGB', 'L', 'CMYK', 'RGBA'}

    val = load_split(folder, 'validation')
    with_transform(val, eval_transform(model), *find_columns(val, data=folder))
    (images, targets), = list(make_loader(val, 8, data=folder))
    assert images.shape == (8, 3, 224, 224) and sorted(targets.tolist()) == sorted(i % 4 for i in range(8))
