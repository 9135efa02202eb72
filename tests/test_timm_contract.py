"""The checks timm's own tests/test_models.py applies to its models, applied to every blockdrop_* entry.

Mirrors test_model_forward, test_model_backward, test_model_default_cfgs, test_model_forward_intermediates,
test_model_forward_features and test_model_forward_intermediates_features (input sizes as timm picks them).
TorchScript / FX tracing are not supported: routing is data dependent, like timm models excluded there.
"""
import math

import pytest
import timm
import torch
from timm.models import FeatureInfo

PARAMS = timm.list_models('blockdrop_*')


def _input_size(model, target):
    size = model.pretrained_cfg['input_size']
    return tuple(min(s, target) for s in size[1:])


@pytest.mark.parametrize('name', PARAMS)
def test_forward(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *_input_size(model, 384))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes) and not torch.isnan(out).any()


@pytest.mark.parametrize('name', PARAMS)
def test_backward(name):
    model = timm.create_model(name, num_classes=42).train()
    x = torch.randn(2, 3, *_input_size(model, 128))
    out = model(x)
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'No gradient for {n}'
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize('name', PARAMS)
def test_default_cfgs(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[-2:] == tuple(cfg['pool_size'])
        assert feats.shape[1] == model.num_features and pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape and out.shape[1] == model.head_hidden_size
        model.reset_classifier(0, '')
        out = model(x)
        assert out.dim() == 4 and out.shape[-2:] == tuple(cfg['pool_size'])
        out = timm.create_model(name, num_classes=0, global_pool='').eval()(x)
        assert out.dim() == 4 and out.shape[-2:] == tuple(cfg['pool_size'])
    for c in (cfg['classifier'],) if isinstance(cfg['classifier'], str) else cfg['classifier']:
        assert c + '.weight' in state_dict
    for c in (cfg['first_conv'],) if isinstance(cfg['first_conv'], str) else cfg['first_conv']:
        assert c + '.weight' in state_dict


def _check_features(outputs, channels, reductions, size, batch):
    assert len(channels) == len(outputs)
    for e, r, o in zip(channels, reductions, outputs):
        assert e == o.shape[1] and o.shape[0] == batch and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(size[0] / r) + 1 and o.shape[3] <= math.ceil(size[1] / r) + 1


@pytest.mark.parametrize('name', PARAMS)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    size = _input_size(model, 96)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        _check_features(intermediates, info.channels(), info.reduction(), size, 2)
        assert len(info.channels()) >= 3
        assert torch.allclose(output, model.forward_features(x))


@pytest.mark.parametrize('name', PARAMS)
@pytest.mark.parametrize('feature_cls', [None, 'getter'])
def test_features_only(name, feature_cls):
    kwargs = dict(feature_cls=feature_cls) if feature_cls else {}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    size = _input_size(model, 96)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    assert len(model.feature_info.channels()) >= 3
    _check_features(outputs, model.feature_info.channels(), model.feature_info.reduction(), size, 2)


def test_features_only_are_gated():
    """Stage outputs of the features model follow the policy: a keep-all threshold changes them."""
    model = timm.create_model('blockdrop_cifar_resnet20', features_only=True, out_indices=(3,)).eval()
    x = torch.randn(2, 3, 32, 32)
    inner = model.model
    with torch.no_grad():
        inner.threshold = 1.0  # drop everything
        dropped = model(x)[0]
        inner.threshold = 0.0  # keep everything
        kept = model(x)[0]
    assert not torch.allclose(dropped, kept)


def test_group_matcher_puts_policy_in_its_own_group():
    from timm.models import group_parameters
    model = timm.create_model('blockdrop_cifar_resnet20')
    groups = group_parameters(model, model.group_matcher(coarse=True))
    policy_groups = {gid for gid, names in groups.items() for n in names if n.startswith('policy.')}
    assert len(policy_groups) == 1
    assert all(n.startswith('policy.') for n in groups[policy_groups.pop()])
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.8)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize('name', ['blockdrop_cifar_resnet20', 'blockdrop_resnet18'])
def test_grad_checkpointing_checkpoints_every_block(name, monkeypatch):
    """In train mode with autograd, set_grad_checkpointing() runs each of the K blocks under torch's checkpoint,
    with the same logits and gradients as without (issue 12: the former test ran under no_grad, 0 calls)."""
    import timm_blockdrop.models.routing as routing
    calls = []
    real = routing.checkpoint
    monkeypatch.setattr(routing, 'checkpoint', lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = timm.create_model(name, num_classes=7).train()
    x = torch.randn(2, 3, *_input_size(model, 64))
    keep = torch.ones(2, model.num_blocks)
    keep[0, 1::2] = 0

    def run():
        model.zero_grad()
        torch.manual_seed(0)
        out = model.forward_with_policy(x, keep)  # train mode: masked, differentiable
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref, ref_grads = run()
    assert not calls
    model.load_state_dict(state)  # BatchNorm statistics as before the first pass
    model.set_grad_checkpointing()
    out, grads = run()
    assert len(calls) == model.num_blocks
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        assert torch.allclose(grads[n], ref_grads[n], rtol=1e-3, atol=1e-5), n
