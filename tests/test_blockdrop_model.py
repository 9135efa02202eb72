"""BlockDropResNet: registration, wrapping, gated execution, policy validation, save/load round trips."""
import json

import pytest
import timm
import torch
from timm.models import save_for_hf

import timm_blockdrop
from timm_blockdrop import BlockDropResNet, UnsupportedModelError
from timm_blockdrop.models.routing import shortcut

EXPECTED = {
    'blockdrop_resnet18': 8, 'blockdrop_resnet34': 16, 'blockdrop_resnet50': 16, 'blockdrop_resnet101': 33,
    'blockdrop_resnet152': 50, 'blockdrop_cifar_resnet20': 9, 'blockdrop_cifar_resnet32': 15,
    'blockdrop_cifar_resnet44': 21, 'blockdrop_cifar_resnet56': 27, 'blockdrop_cifar_resnet110': 54,
}


@pytest.fixture(scope='module')
def r32(resnet32_file):
    base = timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet32_file)))
    return base.eval(), timm_blockdrop.wrap(base).eval()


def test_registered_entries():
    assert set(timm.list_models('blockdrop_*')) == set(EXPECTED)
    assert {'cifar_resnet20', 'cifar_resnet110', 'policy_resnet8', 'policy_resnet10'} <= set(timm.list_models())


@pytest.mark.parametrize('name', ['blockdrop_resnet101', 'blockdrop_cifar_resnet110', 'blockdrop_cifar_resnet32'])
def test_num_blocks(name):
    m = timm.create_model(name)
    assert m.num_blocks == EXPECTED[name] == len(m.blocks) == sum(m.stage_sizes)
    assert m.policy.num_classes == m.num_blocks


def test_paper_policy_networks():
    big, small = timm.create_model('blockdrop_resnet101'), timm.create_model('blockdrop_cifar_resnet32')
    assert big.policy_img_size == 112 and big.policy.pretrained_cfg['architecture'] == 'policy_resnet10'
    assert [len(getattr(big.policy, f'layer{i}')) for i in range(1, 5)] == [1, 1, 1, 1]
    assert small.policy_img_size is None and small.policy.pretrained_cfg['architecture'] == 'policy_resnet8'
    assert [len(s) for s in small.policy.stages()] == [1, 1, 1]


def test_keep_all_equals_base_logits(r32, cifar_test_slice):
    base, m = r32
    x = cifar_test_slice[0][:64]
    with torch.no_grad():
        ref = base(x)
        keep = torch.ones(64, m.num_blocks)
        for mode in ('masked', 'routed'):
            assert torch.allclose(m.forward_with_policy(x, keep, mode=mode), ref, atol=1e-5)


def test_dropped_block_takes_its_shortcut(r32):
    _, m = r32
    x = torch.randn(3, 3, 32, 32)
    keep = torch.zeros(3, m.num_blocks)
    with torch.no_grad():
        h = m._stem(x)
        for b in m.blocks:
            h = shortcut(b, h)
        ref = m.forward_head(h)
        assert torch.allclose(m.forward_with_policy(x, keep), ref, atol=1e-6)
        # a dropped first block of stage 2 still downsamples: the features have stage-3 shape
        assert m.forward_features_with_policy(x, keep).shape == (3, 64, 8, 8)


def test_routed_equals_masked_per_sample(r32):
    _, m = r32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    keep = (torch.rand(16, m.num_blocks, generator=g) < 0.5).float()
    keep[0] = 1
    keep[1] = 0
    with torch.no_grad():
        masked = m.forward_with_policy(x, keep, mode='masked')
        routed = m.forward_with_policy(x, keep, mode='routed')
        single = torch.cat([m.forward_with_policy(x[i:i + 1], keep[i:i + 1]) for i in range(16)])
    assert torch.allclose(masked, routed, atol=1e-5)
    assert torch.allclose(single, routed, atol=1e-5)


def test_policy_probs_and_greedy_forward(r32):
    _, m = r32
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        p = m.policy_probs(x)
        assert p.shape == (5, m.num_blocks) and bool(((p > 0) & (p < 1)).all())
        keep = (p >= m.threshold).float()
        assert torch.allclose(m(x), m.forward_with_policy(x, keep), atol=1e-6)
        m.threshold = 0.0
        assert torch.allclose(m(x), m.forward_with_policy(x, torch.ones_like(keep)), atol=1e-6)
        m.threshold = 0.5


def test_policy_input_is_resized_to_112():
    m = timm.create_model('blockdrop_resnet18').eval()
    seen = []
    m.policy.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        m.policy_probs(torch.randn(1, 3, 224, 224))
    assert seen == [(112, 112)]


@pytest.mark.parametrize('threshold', [-0.1, 1.5])
def test_threshold_out_of_range(threshold):
    m = timm.create_model('blockdrop_cifar_resnet20')
    with pytest.raises(ValueError, match=r'threshold must lie in \[0, 1\]'):
        m.threshold = threshold
    with pytest.raises(ValueError, match='threshold'):
        timm.create_model('blockdrop_cifar_resnet20', threshold=threshold)


def test_alpha_out_of_range():
    with pytest.raises(ValueError, match=r'alpha must lie in \(0.5, 1\]'):
        timm.create_model('blockdrop_cifar_resnet20', alpha=0.4)


@pytest.mark.parametrize('keep,err,match', [
    (torch.ones(2, 8), ValueError, r'shape \(batch, K\) = \(2, 9\)'),
    (torch.ones(3, 9), ValueError, r'shape'),
    (torch.ones(9), ValueError, r'shape'),
    (torch.full((2, 9), 0.5), ValueError, 'only 0 and 1'),
    (torch.ones(2, 9, dtype=torch.complex64), TypeError, 'dtype'),
    ([[1] * 9] * 2, TypeError, 'torch.Tensor'),
])
def test_bad_keep(keep, err, match):
    m = timm.create_model('blockdrop_cifar_resnet20').eval()
    with pytest.raises(err, match=match):
        m.forward_with_policy(torch.randn(2, 3, 32, 32), keep)


def test_keep_accepts_bool_and_int():
    m = timm.create_model('blockdrop_cifar_resnet20').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m.forward_with_policy(x, torch.ones(2, 9))
        assert torch.allclose(m.forward_with_policy(x, torch.ones(2, 9, dtype=torch.bool)), ref)
        assert torch.allclose(m.forward_with_policy(x, torch.ones(2, 9, dtype=torch.long)), ref)


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'resnetv2_18'])
def test_wrap_rejects_non_resnet(name):
    with pytest.raises(UnsupportedModelError, match=rf"ResNet-class.*'{name}'"):
        timm_blockdrop.wrap(timm.create_model(name))


def test_wrap_rejects_plain_module():
    with pytest.raises(UnsupportedModelError, match='Linear'):
        timm_blockdrop.wrap(torch.nn.Linear(3, 3))


@pytest.mark.parametrize('name,k', [('seresnext26d_32x4d', 8), ('resnet26d', 8), ('resnet18', 8)])
def test_wrap_any_resnet_class(name, k):
    base = timm.create_model(name, num_classes=7).eval()
    m = timm_blockdrop.wrap(base).eval()
    assert m.num_blocks == k and m.num_classes == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m.forward_with_policy(x, torch.ones(2, k)), base(x), atol=1e-5)
    sd = m.state_dict()
    for c in m.pretrained_cfg['first_conv']:
        assert c + '.weight' in sd
    assert m.pretrained_cfg['classifier'] + '.weight' in sd


def _roundtrip(model, tmp_path):
    save_for_hf(model, tmp_path, safe_serialization=True)
    assert (tmp_path / 'model.safetensors').is_file()
    cfg = json.loads((tmp_path / 'config.json').read_text())
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    return cfg, loaded


def test_save_load_roundtrip_wrapped_cifar(r32, tmp_path):
    _, m = r32
    m.threshold = 0.4
    try:
        cfg, loaded = _roundtrip(m, tmp_path)
    finally:
        m.threshold = 0.5
    args = cfg['model_args']
    assert cfg['architecture'] == 'blockdrop_cifar_resnet32'
    assert args['base_model'] == 'cifar_resnet32' and args['num_blocks'] == 15
    assert args['policy_model'] == 'policy_resnet8' and args['threshold'] == 0.4
    assert isinstance(loaded, BlockDropResNet) and loaded.threshold == 0.4
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        m.threshold = 0.4
        assert torch.equal(loaded(x), m(x))
        m.threshold = 0.5
    for (k, v), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize('name', ['seresnext26d_32x4d', 'resnet50d'])
def test_save_load_roundtrip_wrapped_base_without_entry(tmp_path, name):
    """A base with no blockdrop_* entry saves under the generic 'blockdrop' entry naming its base (not as
    blockdrop_resnet50) and rebuilds bit-identically through local-dir:."""
    base = timm.create_model(name, num_classes=5)
    m = timm_blockdrop.wrap(base).eval()
    cfg, loaded = _roundtrip(m, tmp_path)
    assert cfg['architecture'] == 'blockdrop' and cfg['model_args']['base_model'] == name
    assert loaded.pretrained_cfg['architecture'] == 'blockdrop' and loaded.num_classes == 5
    assert type(loaded.base) is type(base) and loaded.base.pretrained_cfg['architecture'] == name
    for (k, v), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))


def test_generic_entry_needs_a_base():
    with pytest.raises(ValueError, match='base_model='):
        timm.create_model('blockdrop')


def test_plain_base_checkpoint_into_blockdrop_is_named(resnet32_file):
    with pytest.raises(timm_blockdrop.CheckpointError, match='plain ResNet, not a BlockDrop model'):
        timm.create_model('blockdrop_cifar_resnet32', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(resnet32_file)))


def test_blockdrop_checkpoint_for_another_architecture(r32, tmp_path):
    _, m = r32
    save_for_hf(m, tmp_path, safe_serialization=True)
    with pytest.raises(timm_blockdrop.CheckpointError, match=r"'blockdrop_cifar_resnet20'.*unexpected keys"):
        timm.create_model('blockdrop_cifar_resnet20', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')))


def test_backward_in_eval_mode_reaches_the_base():
    m = timm.create_model('blockdrop_cifar_resnet20').eval()
    torch.nn.init.constant_(m.policy.fc.bias, 0.2)
    m(torch.randn(3, 3, 40, 40)).sum().backward()  # routed execution, any input size the base accepts
    assert m.base.fc.weight.grad is not None and m.base.conv1.weight.grad is not None


def test_forward_blocks_composes(r32):
    _, m = r32
    x = torch.randn(4, 3, 32, 32)
    keep = (torch.rand(4, 15, generator=torch.Generator().manual_seed(3)) < 0.6).float()
    with torch.no_grad():
        h = m.forward_blocks(m.forward_stem(x), keep, 0, 6)
        out = m.forward_head(m.forward_blocks(h, keep, 6))
        assert torch.allclose(out, m.forward_with_policy(x, keep), atol=1e-5)
    with pytest.raises(ValueError, match='outside'):
        m.forward_blocks(h, keep, 6, 16)


@pytest.mark.parametrize('policy_model,match', [
    ('vit_tiny_patch16_224', "policy model 'vit_tiny_patch16_224' is a VisionTransformer"),
    ('resnetv2_18', 'must be a ResNet-class'),
    ('no_such_policy', "unknown policy model 'no_such_policy'"),
])
def test_wrap_refuses_a_policy_that_cannot_be_one(policy_model, match):
    """Issue 13 item 10: at wrap time, with a sentence, not on the first forward."""
    with pytest.raises((UnsupportedModelError, ValueError), match=match):
        timm_blockdrop.wrap(timm.create_model('cifar_resnet20'), policy_model=policy_model)


@pytest.mark.parametrize('shape,match', [
    ((3, 32, 32), r'batch of images of shape \(B, 3, H, W\), got shape \(3, 32, 32\).*unsqueeze\(0\)'),
    ((2, 1, 32, 32), 'the input has 1 channels, the model expects 3'),
])
def test_input_without_batch_dim_or_wrong_channels_is_a_sentence(shape, match):
    """Issue 13 item 11: not 'required rank 4 tensor to use channels_last', on every entry point."""
    m = timm.create_model('blockdrop_cifar_resnet20').eval()
    x = torch.randn(*shape)
    calls = [m, m.fuse(), lambda t: m.forward_with_policy(t, torch.ones(1, 9)), m.policy_probs, m.forward_features,
             lambda t: m.fuse().forward_full(t)]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            with torch.no_grad():
                call(x)


@pytest.mark.parametrize('img_size', [-5, 0, (32, -1), (32,), 'big', 3.5])
def test_flops_of_a_bad_image_size_is_a_sentence(img_size):
    m = timm.create_model('blockdrop_cifar_resnet20')
    with pytest.raises(ValueError, match=r'img_size must be a positive int or a pair \(H, W\)'):
        m.flops(torch.ones(1, 9), img_size=img_size)
