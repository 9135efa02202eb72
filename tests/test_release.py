"""The released weights under release/ (issues 7 and 11): `blockdrop eval` on the real CIFAR-10 test set reproduces the
numbers their model cards print, exactly as printed, and the folders load through timm's `local-dir:`."""
import json
import re
from pathlib import Path

import pytest
import timm
from huggingface_hub import ModelCard

import timm_blockdrop  # noqa: F401  (registers the blockdrop_* architectures)
from timm_blockdrop.tools.cli import main

from conftest import CIFAR10

RELEASE = Path(__file__).resolve().parents[1] / 'release'
RELEASED = ['blockdrop_cifar_resnet20.cifar10', 'blockdrop_cifar_resnet32.cifar10', 'blockdrop_cifar_resnet56.cifar10']


def _card_rows(card_text):
    """The Evaluation table of a card: label -> (top-1, blocks, FLOPs, unique policies, images)."""
    rows = {}
    for line in card_text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 6 and cells[0].startswith(('this model', 'base ')):
            rows[cells[0]] = tuple(cells[1:])
    return rows


def test_every_release_folder_is_listed_here():
    from timm_blockdrop.models.pretrained_cfgs import LOCAL_RELEASES
    found = sorted(p.name for p in RELEASE.iterdir() if p.is_dir())
    assert found == sorted(RELEASED) == sorted(LOCAL_RELEASES)
    assert all(LOCAL_RELEASES[name] == f'release/{name}' for name in RELEASED)


@pytest.mark.parametrize('name', RELEASED)
def test_release_reproduces_its_card(tmp_path, shared, name):
    folder = RELEASE / name
    assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in folder.iterdir()}
    card = ModelCard.load(folder / 'README.md')
    rows = _card_rows(card.text)
    label = 'this model, learned policy'
    assert label in rows, f'the card of {name} has no "{label}" row'
    top1, blocks, flops, unique, images = rows[label]
    out = tmp_path / 'eval.json'
    args = ['eval', '--checkpoint', str(folder), '--data', str(CIFAR10), '--quiet', '--json', str(out)]
    if int(images) < 10000:
        args += ['--max-samples', images]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert f"{r['top1']:.2f}" == top1
    assert f"{r['blocks_mean']:.2f} ± {r['blocks_std']:.2f}" == blocks
    assert f"{r['flops_mean']:.3E} ± {r['flops_std']:.2E}" == flops
    assert (str(r['unique_policies']), str(r['n_images'])) == (unique, images)
    # the Hub metadata (model-index) carries the same top-1
    value = card.data.eval_results[0].metric_value
    assert f'{value:.2f}' == top1
    # and the folder is a timm model: local-dir: gives the same architecture and threshold as config.json
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    config = json.loads((folder / 'config.json').read_text())
    assert model.pretrained_cfg['architecture'] == config['architecture'] == name.split('.')[0]
    assert model.threshold == config['model_args']['threshold']
    assert re.fullmatch(r'\d+\.\d\d', top1)


@pytest.mark.parametrize('name', RELEASED)
def test_the_tag_builds_the_released_architecture(name, tmp_path, monkeypatch):
    """timm builds a tag from its entry: once the folder is the tag's Hub repo, pretrained=True on the tag gives the
    model of the folder (policy network, its input size), not the entry's default policy with these weights."""
    import hashlib
    import shutil
    import huggingface_hub
    import torch
    from timm_blockdrop.models.pretrained_cfgs import hub_id
    folder = RELEASE / name
    repo = tmp_path / f"models--{hub_id(name).replace('/', '--')}"  # the Hub cache as a download leaves it
    revision = hashlib.sha1(name.encode()).hexdigest()
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(revision)
    shutil.copytree(folder, repo / 'snapshots' / revision)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    args = json.loads((folder / 'config.json').read_text())['model_args']
    by_tag = timm.create_model(name, pretrained=True).eval()
    for key in ('base_model', 'policy_model', 'policy_img_size', 'num_blocks'):
        assert by_tag._model_args[key] == args[key], key
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(by_tag(x), timm.create_model(f'local-dir:{folder}', pretrained=True).eval()(x))


# issue 7's recipe configs (*_cpu.yaml) equal the resolved configs of the runs behind its first ResNet-32 release
# (paths and bookkeeping aside)
RUNS = Path(__file__).resolve().parents[1] / 'docs' / 'results' / 'runs'
PATHS = ('pretrained_file', 'data', 'init_from', 'output_dir')
UNUSED = ('decay_epochs',)  # the step schedule's milestones: the release runs use cosine


@pytest.mark.parametrize('config, run', [('cifar10_resnet32_cl_cpu.yaml', 'I_H_g0.2'),
                                         ('cifar10_resnet32_ft_cpu.yaml', 'FA_g5_plr1e-5')])
def test_release_recipe_configs_are_the_recorded_runs(shared, config, run):
    import dataclasses
    from timm_blockdrop.train.config import load_config
    ours = dataclasses.asdict(load_config(str(RUNS.parents[2] / 'recipes' / 'configs' / config)))
    recorded = dataclasses.asdict(load_config(str(RUNS / run / 'config.yaml')))
    assert recorded['lr_schedule'] == 'cosine'
    for key in PATHS:  # the same shared files; a run folder where the run had one
        assert (ours[key] is None) == (recorded[key] is None), key
        if key in ('pretrained_file', 'data') and ours[key] is not None:
            assert Path(ours[key]).name == Path(recorded[key]).name, key
    assert ({k: v for k, v in ours.items() if k not in PATHS + UNUSED}
            == {k: v for k, v in recorded.items() if k not in PATHS + UNUSED})


# the releases of issue 11 are chains of runs: each one's recorded config is its committed recipe config with
# the overrides of its recorded command (--epochs, --set ...), paths and bookkeeping aside
CHAIN = [('cifar10_resnet32_budget7_robust_ft.yaml', 'RB7_robust_randomk7_kd'),
         ('cifar10_resnet32_budget7_cl.yaml', 'PB7_budget7_policy'),
         ('cifar10_resnet32_budget7_ft.yaml', 'JB7_budget7_joint'),
         ('cifar10_resnet32_budget7_ft.yaml', 'JB7b_budget7_joint_more'),
         ('cifar10_resnet32_budget7_ft.yaml', 'JB7c_budget7_joint_long'),
         ('cifar10_resnet32_budget7_stem_cl.yaml', 'PS7_budget7_stem_policy'),
         ('cifar10_resnet32_budget7_ft.yaml', 'JS7_budget7_stem_joint'),
         # and the budgeted ResNet-56's (issue 11, fourth session)
         ('cifar10_resnet56_robust_range_ft.yaml', 'RR56_robust_range9to17_kd'),
         ('cifar10_resnet56_budget13_cl.yaml', 'PR56_range_stem_policy'),
         ('cifar10_resnet56_budget13_ft.yaml', 'JR56_range_stem_joint'),
         ('cifar10_resnet56_budget13_ft.yaml', 'JR56b_range_stem_joint_more'),
         ('cifar10_resnet56_budget13_ft.yaml', 'JR56c_range_stem_joint_long')]
BOOKKEEPING = ('num_workers', 'eval_every_epochs', 'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps',
               'eval_at_start', 'max_train_samples', 'best_metric')


def _command_overrides(command: str):
    """The config overrides of a recorded `accelerate launch recipes/<stage>.py ...` command."""
    import shlex
    from timm_blockdrop.train.config import parse_set
    words = shlex.split(command)
    flags = {'--epochs': 'epochs', '--batch-size': 'batch_size', '--max-train-samples': 'max_train_samples'}
    out, sets = {}, []
    for flag, value in zip(words, words[1:]):
        if flag in flags:
            out[flags[flag]] = int(value)
        elif flag == '--set':
            sets.append(value)
    return {**parse_set(sets), **out}


@pytest.mark.parametrize('config, run', CHAIN)
def test_the_release_chain_runs_are_their_recipe_configs(shared, config, run):
    import dataclasses
    from timm_blockdrop.train.config import load_config
    command = json.loads((RUNS / run / 'run.json').read_text())['command']
    overrides = {k: v for k, v in _command_overrides(command).items() if k not in PATHS}
    ours = dataclasses.asdict(load_config(str(RUNS.parents[2] / 'recipes' / 'configs' / config), overrides))
    recorded = dataclasses.asdict(load_config(str(RUNS / run / 'config.yaml')))
    for c in (ours, recorded):  # the same shared files, wherever ../shared was
        for key in ('pretrained_file', 'data', 'teacher_file'):
            c[key] = c[key] and Path(c[key]).name
    skip = ('init_from', 'output_dir') + BOOKKEEPING
    if recorded['eval_every_epochs'] > recorded['epochs'] and not recorded['eval_at_start']:
        skip += ('eval_split',)  # a run that never evaluated: its eval split had no effect
    for c in (ours, recorded):  # milestones after the last epoch never fire
        c['decay_epochs'] = [e for e in c['decay_epochs'] if e < recorded['epochs']]
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in recorded.items() if k not in skip}
