"""`blockdrop compare` (issue 11 item 6): BlockDrop models against static ResNets on the same images."""
import json

import pytest
from PIL import Image

from timm_blockdrop.tools import compare
from timm_blockdrop.tools.cli import main

from conftest import CIFAR10, REPO, RESNET_FILES

RELEASE20 = REPO / 'release' / 'blockdrop_cifar_resnet20.cifar10'
ROW_KEYS = {'label', 'model', 'top1', 'ms_per_image', 'flops_mean', 'blocks_mean'}
FAST = ['--max-samples', '64', '--batch-size', '32', '--time-batches', '1', '--repeats', '1', '--threads', '1',
        '--quiet']


def _eval(tmp_path, name, *args):
    out = tmp_path / f'{name}.json'
    assert main(['eval', '--data', str(CIFAR10), '--max-samples', '64', '--batch-size', '32', '--quiet',
                 '--json', str(out), *args]) == 0
    return json.loads(out.read_text())


def test_compare_two_models_writes_json_and_a_plot(tmp_path, shared, capsys, monkeypatch):
    out, png = tmp_path / 'compare.json', tmp_path / 'plots' / 'compare.png'
    timed = compare.interleaved_times

    def cycles(runs, repeats, min_seconds, n_inputs):
        # a slow machine times whole cycles over the inputs: call number i >= n_inputs must wrap around
        for run in runs.values():
            for i in range(2 * n_inputs):
                run(i)
        return timed(runs, repeats, min_seconds, n_inputs)

    monkeypatch.setattr(compare, 'interleaved_times', cycles)
    static = f'cifar_resnet20={RESNET_FILES[20]}'
    assert main(['compare', '--data', str(CIFAR10), *FAST, '--json', str(out), '--plot', str(png),
                 str(RELEASE20), static]) == 0
    report = json.loads(out.read_text())
    rows = {r['label']: r for r in report['rows']}
    assert list(rows) == [RELEASE20.name, 'cifar_resnet20'] and all(ROW_KEYS <= set(r) for r in rows.values())
    assert report['n_images'] == 64 and report['pareto'] == compare.pareto_front(report['rows'])
    # the same numbers blockdrop eval gives on the same 64 images: learned policy, and all blocks for the static one
    learned = _eval(tmp_path, 'learned', '--checkpoint', str(RELEASE20))
    full = _eval(tmp_path, 'full', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]))
    for row, ref in ((rows[RELEASE20.name], learned), (rows['cifar_resnet20'], full)):
        assert row['model'] == ref['model']
        assert row['top1'] == pytest.approx(ref['top1']) and row['blocks_mean'] == pytest.approx(ref['blocks_mean'])
        assert row['flops_mean'] == pytest.approx(ref['flops_mean']) and row['ms_per_image'] > 0
    assert rows['cifar_resnet20']['blocks_mean'] == 9 and rows[RELEASE20.name]['blocks_mean'] < 9
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size[0] > 300
    assert 'Pareto front' in capsys.readouterr().out


def test_pareto_front():
    rows = [dict(label='a', top1=90.0, ms_per_image=1.0), dict(label='b', top1=92.0, ms_per_image=2.0),
            dict(label='c', top1=89.0, ms_per_image=1.5),  # beaten by a: less accurate and slower
            dict(label='d', top1=92.0, ms_per_image=2.5),  # beaten by b: as accurate, slower
            dict(label='e', top1=88.0, ms_per_image=0.5)]
    assert compare.pareto_front(rows) == ['a', 'b', 'e']


@pytest.mark.parametrize('args,message', [
    (['no/such/folder'], "SPEC 'no/such/folder' is neither a checkpoint folder nor NAME=WEIGHTS_FILE"),
    (['cifar_resnet20='], 'expected NAME=WEIGHTS_FILE'),
    (['convnext_atto=weights.pth'], 'which BlockDrop cannot gate'),
    ([f'cifar_resnet20={RESNET_FILES[20]}', f'cifar_resnet20={RESNET_FILES[20]}'], 'two SPECs have the same label'),
    (['--max-samples', '0', str(RELEASE20)], '--max-samples must be a positive integer, got 0'),
])
def test_bad_specs_get_a_sentence(tmp_path, shared, capsys, args, message):
    assert main(['compare', '--data', str(CIFAR10), '--quiet', '--json', str(tmp_path / 'c.json'), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / 'c.json').exists()


def test_outputs_are_checked_before_any_model_runs(tmp_path, shared, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError('a model was loaded before the output paths were checked')

    monkeypatch.setattr(compare, 'load_contender', fail)
    assert main(['compare', '--data', str(CIFAR10), '--json', str(tmp_path), str(RELEASE20)]) == 2
    assert f'--json {tmp_path} is a folder' in capsys.readouterr().err
    monkeypatch.setattr(compare, 'Figure', None)  # matplotlib not installed
    assert main(['compare', '--data', str(CIFAR10), '--json', str(tmp_path / 'c.json'), '--plot',
                 str(tmp_path / 'c.png'), str(RELEASE20)]) == 2
    assert "--plot needs matplotlib, which is not installed: pip install 'timm-blockdrop[plots]'" in \
        capsys.readouterr().err


def test_a_recipe_model_folder_is_labelled_by_its_run(tmp_path, shared):
    """Recipes write <output_dir>/model: two runs' models must not both be called 'model' in the table."""
    import shutil
    run_model = tmp_path / 'JS7' / 'model'
    shutil.copytree(RELEASE20, run_model)
    assert compare.load_contender(str(run_model)).label == 'JS7/model'
    assert compare.load_contender(str(RELEASE20)).label == RELEASE20.name
