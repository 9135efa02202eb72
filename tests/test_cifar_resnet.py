"""CIFAR base ResNets: architecture facts, loading the shared checkpoints as they are, clear load errors."""
import pytest
import timm
import torch

from timm_blockdrop import CheckpointError
from timm_blockdrop.models.cifar_resnet import CIFAR100_MEAN, CIFAR10_MEAN, ShortcutA

from conftest import CIFAR100_R56, RESNET_FILES


@pytest.mark.parametrize('depth,blocks,params_m', [(20, 9, 0.27), (32, 15, 0.46), (44, 21, 0.66), (56, 27, 0.85),
                                                   (110, 54, 1.73)])
def test_depth_blocks_params(depth, blocks, params_m):
    m = timm.create_model(f'cifar_resnet{depth}')
    assert sum(len(s) for s in m.stages()) == blocks
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_shortcut_a_is_parameter_free_subsample_and_pad():
    s = ShortcutA(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = s(x)
    assert y.shape == (2, 32, 4, 4) and not list(s.parameters())
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_shortcut_b_has_projection():
    m = timm.create_model('cifar_resnet20', shortcut='B')
    assert isinstance(m.layer2[0].downsample, torch.nn.Sequential)
    assert m.layer1[0].downsample is None


@pytest.mark.parametrize('depth', [20, 32, 44, 56])
def test_loads_shared_checkpoints_as_they_are(depth):
    m = timm.create_model(f'cifar_resnet{depth}', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(RESNET_FILES[depth])))
    raw = torch.load(RESNET_FILES[depth], map_location='cpu', weights_only=True)['state_dict']
    assert torch.equal(m.fc.weight, raw['module.linear.weight'])
    assert torch.equal(m.layer3[-1].conv2.weight, raw[f'module.layer3.{len(m.layer3) - 1}.conv2.weight'])


def test_loads_cifar100_shortcut_b_checkpoint():
    m = timm.create_model('cifar_resnet56.cifar100', shortcut='B', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(CIFAR100_R56)))
    assert m.num_classes == 100 and m.pretrained_cfg['mean'] == CIFAR100_MEAN
    raw = torch.load(CIFAR100_R56, map_location='cpu', weights_only=True)
    assert torch.equal(m.layer2[0].downsample[0].weight, raw['layer2.0.downsample.0.weight'])


def test_pretrained_cfg_carries_normalisation():
    assert timm.create_model('cifar_resnet32').pretrained_cfg['mean'] == CIFAR10_MEAN
    assert timm.create_model('cifar_resnet56.cifar100').pretrained_cfg['mean'] == CIFAR100_MEAN


def test_checkpoint_for_another_architecture_names_keys():
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'cifar_resnet32'.*missing keys: layer1\.3"):
        timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))


def test_shortcut_kind_mismatch_is_named():
    with pytest.raises(CheckpointError, match=r'unexpected keys: layer2\.0\.downsample'):
        timm.create_model('cifar_resnet56.cifar100', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(CIFAR100_R56)))


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / 'nope.th'
    with pytest.raises(FileNotFoundError, match='nope.th'):
        timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


@pytest.mark.parametrize('suffix,content', [('.th', b'not a checkpoint at all'), ('.safetensors', b'\x00\x01garbage')])
def test_corrupt_checkpoint_file(tmp_path, suffix, content):
    bad = tmp_path / f'bad{suffix}'
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match='corrupt'):
        timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))
