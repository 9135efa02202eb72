"""`blockdrop publish` and loading published repos back through timm (hf-hub:, pretrained=True, local-dir:).

All offline (HF_HUB_OFFLINE=1): the Hub is replaced by a local HF cache seeded from the dry-run folder
(``models--ORG--NAME/refs/main`` + ``snapshots/<rev>/``), the upload by a stand-in ``HfApi``. Every number
checked in a card comes from a `blockdrop eval` run in the test, on the first 64 CIFAR-10 test images.
"""
import hashlib
import json
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from timm.models import save_for_hf

import timm_blockdrop
from timm_blockdrop.tools import hub
from timm_blockdrop.tools.cli import main
from timm_blockdrop.models.pretrained_cfgs import DATASETS, HUB_ORG, RELEASED_TAGS, RELEASE_MODEL_ARGS, hub_id

from conftest import CIFAR10, REPO, RESNET_FILES

TAG = 'blockdrop_cifar_resnet32.cifar10'
REPO_ID = hub_id(TAG)  # the registered tag's own repo, so pretrained=True on the tag finds it
MODEL_FILES = {'README.md', 'config.json', 'model.safetensors'}


def _cifar_base(depth: int):
    return timm.create_model(f'cifar_resnet{depth}', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[depth])))


def _eval_json(out: Path, *args) -> dict:
    assert main(['eval', '--data', str(CIFAR10), '--max-samples', '64', '--quiet', '--json', str(out), *args]) == 0
    return json.loads(out.read_text())


def _seed_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded repo at its main revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / 'main').write_text(revision)
    shutil.copytree(folder, repo / 'snapshots' / revision)
    return cache


def _publish_args(run, *extra):
    return ['publish', '--checkpoint', str(run.ckpt), '--repo-id', REPO_ID,
            '--eval-json', str(run.learned_json), '--eval-json', str(run.full_json),
            '--base-eval-json', str(run.base_json), '--recipe', run.recipe,
            '--train-config', str(run.train_config), '--train-command', run.train_command, *extra]


@pytest.fixture(scope='module')
def run(tmp_path_factory, shared):
    """A wrapped CIFAR ResNet-32 checkpoint, its eval reports and plot, published with --dry-run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tmp = tmp_path_factory.mktemp('publish')
    # the architecture the tag's weights are released with, so that pretrained=True on the tag can load this repo
    model = timm_blockdrop.wrap(_cifar_base(32), **RELEASE_MODEL_ARGS.get(TAG, {})).eval()
    ckpt = tmp / 'ckpt'
    save_for_hf(model, ckpt, safe_serialization=True)
    learned = _eval_json(tmp / 'learned.json', '--checkpoint', str(ckpt))
    full = _eval_json(tmp / 'full.json', '--checkpoint', str(ckpt), '--policy', 'full')
    base_report = _eval_json(tmp / 'base.json', '--model', 'cifar_resnet32', '--pretrained-file', str(RESNET_FILES[32]))
    fig, ax = plt.subplots()  # the run's plot: its block-count histogram
    ax.bar(range(len(learned['blocks_hist'])), learned['blocks_hist'])
    fig.savefig(ckpt / 'blocks_hist.png')
    plt.close(fig)
    train_config = tmp / 'cifar10_resnet32_cl.yaml'
    train_config.write_text('model: cifar_resnet32\nepochs: 1\n')
    run = SimpleNamespace(
        model=model, ckpt=ckpt, learned=learned, full=full, base=base_report, folder=tmp / 'repo',
        learned_json=tmp / 'learned.json', full_json=tmp / 'full.json', base_json=tmp / 'base.json',
        train_config=train_config, recipe='curriculum, then joint finetuning',
        train_command=f'accelerate launch recipes/curriculum.py --config {train_config.name}',
    )
    assert main(_publish_args(run, '--dry-run', str(run.folder))) == 0
    return run


# ---- the repo folder and its card ----

def test_dry_run_writes_timm_layout(run):
    assert {p.name for p in run.folder.iterdir()} == MODEL_FILES | {'blocks_hist.png', run.train_config.name}
    config = json.loads((run.folder / 'config.json').read_text())
    saved = json.loads((run.ckpt / 'config.json').read_text())
    assert config['architecture'] == 'blockdrop_cifar_resnet32' and config['num_classes'] == 10
    assert config['model_args'] == saved['model_args']  # base_model, base_kwargs, K, policy, alpha, threshold
    assert {'base_model', 'num_blocks', 'policy_model', 'alpha', 'threshold'} <= set(config['model_args'])
    assert 'dataset: uoft-cs/cifar10' in config['pretrained_cfg']['notes']
    assert config['pretrained_cfg']['mean'] == saved['pretrained_cfg']['mean']


def test_card_parses_as_hub_metadata_with_measured_numbers(run):
    card = ModelCard.load(run.folder / 'README.md')
    data = card.data
    assert data.library_name == 'timm' and data.license == 'bsd-2-clause'  # the akamaster base weights' licence
    assert data.datasets == ['uoft-cs/cifar10'] and 'blockdrop' in data.tags and 'arxiv:1711.08393' in data.tags
    (result,) = data.eval_results
    assert result.metric_type == 'accuracy' and result.metric_value == run.learned['top1']
    assert result.dataset_type == 'uoft-cs/cifar10' and result.dataset_split == 'test[:64]'
    assert 'model-index' in card.content.split('---')[1]
    text = card.text
    for report in (run.learned, run.full, run.base):
        assert f"| {report['top1']:.2f} | {report['blocks_mean']:.2f} ± {report['blocks_std']:.2f} | " \
               f"{report['flops_mean']:.3E} ± {report['flops_std']:.2E} | {report['unique_policies']} | 64 |" in text
    assert '| BlockDrop-32 (gamma = 5) | 91.3 |' in text  # the paper's figures beside ours
    assert 'import timm_blockdrop' in text and f"timm.create_model('hf-hub:{REPO_ID}', pretrained=True)" in text
    assert f"timm.create_model('{TAG}', pretrained=True)" in text
    assert run.train_command in text and 'epochs: 1' in text and run.recipe in text
    assert '![blocks_hist.png](blocks_hist.png)' in text
    assert 'batch composition' in text and '2 x multiply-adds' in text and 'policy network' in text
    assert '@inproceedings{wu2018blockdrop' in text
    assert 'first 64 of its 10000 images' in text


def test_card_template_is_packaged():
    """The template a wheel ships: a file inside timm_blockdrop/tools matched by its package-data globs (as
    setuptools resolves them), and the only copy: the repository's hub_cards/ entry links to it."""
    package = Path(hub.__file__).parent
    template = Path(str(hub.CARD_TEMPLATE))
    assert template.is_file() and not template.is_symlink() and template.parent.parent == package
    globs = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']['package-data']
    shipped = {f.resolve() for pattern in globs.get(hub.__package__, []) for f in package.glob(pattern)}
    assert template.resolve() in shipped, f'{template} is not in the package data {globs.get(hub.__package__)}'
    link = REPO / 'hub_cards' / template.name
    assert link.is_symlink() and link.resolve() == template.resolve()


# ---- loading the published repo back ----

def test_hf_hub_and_local_dir_load_identical_offline(run, tmp_path, cifar_test_slice):
    cache = _seed_hub_cache(tmp_path / 'hub', REPO_ID, run.folder)
    x = cifar_test_slice[0][:32]
    with torch.no_grad():
        want = run.model(x)
        from_hub = timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True, cache_dir=cache).eval()
        from_dir = timm.create_model(f'local-dir:{run.folder}', pretrained=True).eval()
        assert from_hub.pretrained_cfg['source'] == 'hf-hub' and from_hub.pretrained_cfg['hf_hub_id'] == REPO_ID
        assert torch.equal(from_hub(x), want) and torch.equal(from_dir(x), want)


def test_registered_tag_pretrained_loads_from_hub_cache(run, tmp_path, monkeypatch, cifar_test_slice):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(_seed_hub_cache(tmp_path, REPO_ID, run.folder)))
    x = cifar_test_slice[0][:32]
    with torch.no_grad():
        m = timm.create_model('blockdrop_cifar_resnet32', pretrained=True).eval()  # default tag: .cifar10
        assert m.pretrained_cfg['hf_hub_id'] == REPO_ID and m.pretrained_cfg['tag'] == 'cifar10'
        assert torch.equal(m(x), run.model(x))


def test_wrapped_seresnext_round_trips_through_hub(tmp_path):
    """A base with no blockdrop_* entry (seresnext26d_32x4d) publishes and loads back under the generic entry."""
    torch.manual_seed(0)
    model = timm_blockdrop.wrap(timm.create_model('seresnext26d_32x4d')).eval()
    save_for_hf(model, tmp_path / 'ckpt', safe_serialization=True)
    repo_id = 'someone/blockdrop-seresnext26d'
    assert main(['publish', '--checkpoint', str(tmp_path / 'ckpt'), '--repo-id', repo_id,
                 '--dry-run', str(tmp_path / 'repo')]) == 0
    card = ModelCard.load(tmp_path / 'repo' / 'README.md')
    assert card.data.datasets == [DATASETS['in1k']['hub_id']] and not card.data.eval_results
    assert 'Not evaluated yet' in card.text and f"{model.flops_table()[0].full:.3E}" in card.text
    cache = _seed_hub_cache(tmp_path / 'hub', repo_id, tmp_path / 'repo')
    loaded = timm.create_model(f'hf-hub:{repo_id}', pretrained=True, cache_dir=cache).eval()
    assert loaded.pretrained_cfg['architecture'] == 'blockdrop'  # the generic entry: no blockdrop_* names it
    assert loaded._model_args['base_model'] == 'seresnext26d_32x4d' and hasattr(loaded.base.layer1[0], 'se')
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---- the upload ----

class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records what would be created and uploaded."""
    calls = []

    def __init__(self, **kwargs):
        self.calls.append(('init', kwargs))

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None, **kwargs):
        self.calls.append(('create_repo', dict(repo_id=repo_id, private=private, exist_ok=exist_ok)))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(('upload_folder', dict(repo_id=repo_id, repo_type=repo_type, files=files)))
        return SimpleNamespace(commit_url=f'https://huggingface.co/{repo_id}/commit/0')


def test_upload_sends_exactly_the_folder(run, monkeypatch, capsys):
    RecordingHfApi.calls = []
    monkeypatch.setattr(hub, 'HfApi', RecordingHfApi)
    assert main(_publish_args(run, '--private')) == 0
    calls = dict((name, kwargs) for name, kwargs in RecordingHfApi.calls)
    assert calls['create_repo'] == dict(repo_id=REPO_ID, private=True, exist_ok=True)
    sent = calls['upload_folder']
    assert sent['repo_id'] == REPO_ID and sent['repo_type'] == 'model'
    assert sent['files'] == {p.name: p.read_bytes() for p in run.folder.iterdir()}
    assert f'https://huggingface.co/{REPO_ID}' in capsys.readouterr().out


def test_upload_offline_is_a_clear_error(run, capsys):
    assert main(['publish', '--checkpoint', str(run.ckpt), '--repo-id', REPO_ID]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('blockdrop publish: error: upload to') and 'offline' in err and '--dry-run' in err
    assert len(err.splitlines()) == 1


# ---- bad input ----

def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('repo_id', ['no-org', 'a/b/c', 'org/', 'org/bad..name', 'org/has space'])
def test_malformed_repo_id(run, capsys, tmp_path, repo_id):
    err = _cli_error(capsys, ['publish', '--checkpoint', str(run.ckpt), '--repo-id', repo_id,
                              '--dry-run', str(tmp_path / 'out')])
    assert f"repo id '{repo_id}' is malformed" in err
    assert not (tmp_path / 'out').exists()


def test_checkpoint_folder_missing_or_without_config(run, capsys, tmp_path):
    err = _cli_error(capsys, ['publish', '--checkpoint', str(tmp_path / 'nope'), '--repo-id', REPO_ID,
                              '--dry-run', str(tmp_path / 'out')])
    assert 'checkpoint folder not found' in err
    (tmp_path / 'weights_only').mkdir()
    shutil.copy(run.ckpt / 'model.safetensors', tmp_path / 'weights_only')
    err = _cli_error(capsys, ['publish', '--checkpoint', str(tmp_path / 'weights_only'), '--repo-id', REPO_ID,
                              '--dry-run', str(tmp_path / 'out')])
    assert 'has no config.json' in err


def test_config_of_a_plain_resnet_is_refused(capsys, tmp_path, shared):
    save_for_hf(_cifar_base(32), tmp_path / 'plain', safe_serialization=True)
    err = _cli_error(capsys, ['publish', '--checkpoint', str(tmp_path / 'plain'), '--repo-id', REPO_ID,
                              '--dry-run', str(tmp_path / 'out')])
    assert "holds a 'cifar_resnet32', not a BlockDrop model" in err and 'timm_blockdrop.wrap' in err


def test_eval_json_of_another_model_is_refused(run, capsys, tmp_path):
    """Reports measured on real models that differ: other entry, other K under the same entry, other base."""
    other_entry = timm_blockdrop.wrap(_cifar_base(20))
    other_k = timm.create_model('blockdrop_cifar_resnet32', base_model='cifar_resnet20')
    other_base = timm_blockdrop.wrap(timm.create_model('cifar_resnet32', shortcut='B'))
    expected = {
        'other_entry': "is for model 'blockdrop_cifar_resnet20', not for this checkpoint's architecture",
        'other_k': 'is for a model with K = 9 blocks, this checkpoint has K = 15',
        'other_base': 'was measured on another base network',
    }
    for name, model in dict(other_entry=other_entry, other_k=other_k, other_base=other_base).items():
        save_for_hf(model, tmp_path / name, safe_serialization=True)
        report = tmp_path / f'{name}.json'
        _eval_json(report, '--checkpoint', str(tmp_path / name))
        err = _cli_error(capsys, ['publish', '--checkpoint', str(run.ckpt), '--repo-id', REPO_ID,
                                  '--eval-json', str(report), '--dry-run', str(tmp_path / 'out')])
        assert expected[name] in err, err
    err = _cli_error(capsys, ['publish', '--checkpoint', str(run.ckpt), '--repo-id', REPO_ID,
                              '--base-eval-json', str(run.learned_json), '--dry-run', str(tmp_path / 'out')])
    assert "not for this checkpoint's base ResNet 'cifar_resnet32'" in err
    assert not (tmp_path / 'out').exists()


def test_output_folder_not_empty(run, capsys):
    err = _cli_error(capsys, ['publish', '--checkpoint', str(run.ckpt), '--repo-id', REPO_ID,
                              '--dry-run', str(run.folder)])
    assert 'exists and is not empty' in err


def test_pretrained_offline_with_nothing_cached(tmp_path, monkeypatch, capsys, shared):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError) as e:
        timm.create_model('blockdrop_cifar_resnet32', pretrained=True)
    msg = str(e.value)
    assert f'no weights for {TAG}: Hub repo {REPO_ID} is not in the local cache' in msg
    assert 'HF_HUB_OFFLINE=1' in msg and f'hf download {REPO_ID}' in msg and "'local-dir:PATH'" in msg
    assert f"not on the Hub yet: a Hub-ready copy is in the folder release/{TAG}" in msg  # issue 7's release
    assert f"timm.create_model('local-dir:release/{TAG}', pretrained=True)" in msg
    with pytest.raises(FileNotFoundError, match='No weights are released for blockdrop_cifar_resnet44.cifar10 yet'):
        timm.create_model('blockdrop_cifar_resnet44', pretrained=True)
    with pytest.raises(FileNotFoundError, match='ImageNet recipe'):
        timm.create_model('blockdrop_resnet18.in1k', pretrained=True)
    err = _cli_error(capsys, ['eval', '--model', 'blockdrop_cifar_resnet32', '--data', str(CIFAR10)])
    assert f'Hub repo {REPO_ID} is not in the local cache' in err


# ---- pretrained tags ----

def test_every_blockdrop_tag_names_its_hub_repo_dataset_licence_and_base():
    names = timm.list_pretrained('blockdrop_*')
    assert {n.split('.')[0] for n in names} == set(timm.list_models('blockdrop_*'))
    readme = (REPO / 'README.md').read_text()
    section = readme[readme.index('## Publishing to the Hub'):]
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_id == f'{HUB_ORG}/{name}' and cfg.license and cfg.paper_ids == 'arXiv:1711.08393'
        dataset = DATASETS[name.split('.')[1]]
        assert f"dataset: {dataset['hub_id']}" in cfg.notes and any(n.startswith('base: ') for n in cfg.notes)
        assert cfg.num_classes == {'CIFAR-10': 10, 'CIFAR-100': 100, 'ImageNet-1k': 1000}[dataset['name']]
        (row,) = [line for line in section.splitlines() if line.startswith(f'| `{name}` |')]
        assert ('not yet' in row) == (name not in RELEASED_TAGS), row


# ---- the speed-up and the comparison with static ResNets in the card (issue 11 item 7) ----

def test_card_carries_the_measured_speedup_and_the_compare_rows(run, tmp_path):
    speed = _eval_json(tmp_path / 'speed.json', '--checkpoint', str(run.ckpt), '--compare-full', '--batch-size', '32')
    assert (speed['batch_size'], speed['threads']) == (32, torch.get_num_threads())
    compare = tmp_path / 'compare.json'
    assert main(['compare', '--data', str(CIFAR10), '--max-samples', '64', '--batch-size', '32', '--json',
                 str(compare), str(run.ckpt), f'cifar_resnet20={RESNET_FILES[20]}']) == 0
    rows = json.loads(compare.read_text())['rows']
    folder = tmp_path / 'repo'
    assert main(_publish_args(run, '--speed-json', str(tmp_path / 'speed.json'), '--compare-json', str(compare),
                              '--dry-run', str(folder))) == 0
    text = ModelCard.load(folder / 'README.md').text
    assert '### Speed' in text and '### Against static ResNets' in text
    assert (f"| 32 | {speed['threads']} | 64 | test | {speed['images_per_s']:.0f} | "
            f"{speed['full_fast_images_per_s']:.0f} | {speed['speedup_vs_full_fast']:.2f}x |") in text
    for row in rows:
        assert f"| {row['label']} | {row['top1']:.2f} | {row['ms_per_image']:.3f} | {row['blocks_mean']:.2f} |" in text
    # without them the card has neither section
    assert '### Speed' not in ModelCard.load(run.folder / 'README.md').text


def test_a_speed_json_without_timing_is_refused(run, capsys, tmp_path):
    err = _cli_error(capsys, _publish_args(run, '--speed-json', str(run.learned_json), '--dry-run',
                                           str(tmp_path / 'out')))
    assert 'has no timing of the learned policy against the fused full ResNet' in err and '--compare-full' in err
    bad = tmp_path / 'compare.json'
    bad.write_text(json.dumps({'rows': [{'label': 'x'}]}))
    err = _cli_error(capsys, _publish_args(run, '--compare-json', str(bad), '--dry-run', str(tmp_path / 'out')))
    assert "is not a 'blockdrop compare --json' report" in err
    assert not (tmp_path / 'out').exists()
