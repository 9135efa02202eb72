"""One way from a name, folder or file to a model (``models/loading.py``), with one list of user errors and one
translation of Hub errors (``errors.py``): issue 12."""
import pytest
import timm
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

import timm_blockdrop
from timm_blockdrop import errors
from timm_blockdrop.models import checkpoints, loading
from timm_blockdrop.tools import cli
from timm_blockdrop.tools.cli import main

from conftest import CIFAR10, RESNET_FILES


def _hub_error(cls, message):
    """An instance of huggingface_hub's ``cls`` without an HTTP response (their constructors want one)."""
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    return e


HUB_CASES = [
    (GatedRepoError, 'is gated: accept its terms'),
    (RepositoryNotFoundError, 'does not exist, or is private or gated'),
    (LocalEntryNotFoundError, 'is not in the local cache'),
    (EntryNotFoundError, 'holds no model.safetensors'),
]


@pytest.mark.parametrize('cls,why', HUB_CASES, ids=[c.__name__ for c, _ in HUB_CASES])
def test_hub_errors_are_translated_in_one_place_for_every_way_in(monkeypatch, capsys, cls, why):
    """The same sentence whether the weights are a package entry's tag, any timm name, or an hf-hub: id."""
    real_create = timm.create_model

    def raising(*args, **kwargs):
        raise _hub_error(cls, '404 Client Error')

    def create_raising(name, pretrained=False, **kwargs):
        if not pretrained and not name.startswith('hf-hub:'):  # load_model's weightless support check
            return real_create(name, **kwargs)
        raising()

    # a blockdrop_* tag: translated inside the entry (build_with_clear_errors), so timm.create_model says it too
    monkeypatch.setattr(checkpoints, 'build_model_with_cfg', raising)
    with pytest.raises(FileNotFoundError, match=f'Hub repo timm-blockdrop/blockdrop_cifar_resnet32.cifar10 {why}'):
        timm.create_model('blockdrop_cifar_resnet32', pretrained=True)
    monkeypatch.undo()
    # any other timm name and an hf-hub: id: translated by load_model, as the CLI shows it
    monkeypatch.setattr(timm, 'create_model', create_raising)
    for name, repo in (('resnet18', 'timm/resnet18.a1_in1k'), ('hf-hub:someone/model', 'someone/model')):
        assert main(['eval', '--model', name, '--data', str(CIFAR10), '--quiet']) == 2
        err = capsys.readouterr().err.strip()
        assert f'Hub repo {repo} {why}' in err and f'hf download {repo}' in err, err
        assert len(err.splitlines()) == 1 and 'Traceback' not in err


def test_a_bug_is_not_a_user_error(monkeypatch, shared):
    """One list of user errors; a RuntimeError from deep inside (a bug) keeps its traceback instead of a sentence."""
    assert cli.USER_ERRORS is errors.USER_ERRORS
    assert not any(issubclass(RuntimeError, e) or issubclass(TypeError, e) for e in errors.USER_ERRORS)

    def broken(*args, **kwargs):
        raise RuntimeError('an internal bug')

    monkeypatch.setattr(cli, 'evaluate_policy', broken)
    with pytest.raises(RuntimeError, match='an internal bug'):
        main(['eval', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]), '--data', str(CIFAR10),
              '--max-samples', '8', '--quiet'])


def test_require_is_checked_from_the_architecture_before_any_weights(tmp_path, monkeypatch):
    """An unsupported base is refused without reading its weight file (it does not even exist here)."""
    with pytest.raises(timm_blockdrop.UnsupportedModelError, match=r"'convnext_atto' is a ConvNeXt"):
        loading.load_model('convnext_atto', pretrained_file=str(tmp_path / 'absent.pth'), require='wrappable')
    with pytest.raises(timm_blockdrop.CheckpointError, match="holds a 'cifar_resnet20', not a BlockDrop model"):
        loading.load_model('cifar_resnet20', pretrained_file=str(RESNET_FILES[20]), require='blockdrop')
    m = loading.load_model('cifar_resnet20', pretrained=False, require='wrappable')
    assert isinstance(loading.as_blockdrop(m), timm_blockdrop.BlockDropResNet)
    with pytest.raises(ValueError, match='require must be one of'):
        loading.load_model('cifar_resnet20', require='resnet')
