"""Cheap policies (issue 11 item 4): a policy worth at most 2 % of the base's FLOPs, counted, saved and rebuilt."""
import json

import pytest
import timm
import torch

import timm_blockdrop  # noqa: F401  (registers the models)
from timm_blockdrop import wrap
from timm_blockdrop.models.flops import count_flops as _count
from timm_blockdrop.models.policy_net import policy_input

from conftest import RESNET_FILES


@pytest.fixture(scope='module')
def resnet32():
    return timm.create_model('cifar_resnet32', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[32]))).eval()


def count_flops(fn, x):
    with torch.no_grad():
        return _count(fn, x)[0]


def _policy_flops(model):
    x = policy_input(torch.zeros(1, 3, 32, 32), model.policy_img_size)
    return count_flops(model.policy, x)


@pytest.mark.parametrize('policy_model, size, most', [
    ('policy_resnet8_tiny', 16, 0.02),   # the cheap policy: at most 2 % of the base
    ('policy_resnet8', 16, 0.05),        # the paper's policy on a 16 px image
])
def test_a_cheap_policy_costs_what_it_says_and_flops_counts_it(resnet32, policy_model, size, most):
    m = wrap(resnet32, policy_model=policy_model, policy_img_size=size).eval()
    base = count_flops(resnet32, torch.zeros(1, 3, 32, 32))
    policy = _policy_flops(m)
    assert 0 < policy <= most * base, f'{policy_model} @ {size} px: {policy / base:.2%} of the base'
    keep_all = torch.ones(1, m.num_blocks)
    assert m.flops(keep_all).item() == pytest.approx(base + policy, rel=1e-6)  # flops() counts the policy


def test_the_paper_policy_on_the_full_image_is_not_cheap(resnet32):
    """The guard above can fail: the default ResNet-8 on the 32 px image costs 17.8 % of a ResNet-32."""
    m = wrap(resnet32).eval()
    share = _policy_flops(m) / count_flops(resnet32, torch.zeros(1, 3, 32, 32))
    assert share == pytest.approx(0.178, abs=0.005) and share > 0.02


def test_the_choice_is_saved_in_config_json_and_rebuilt(resnet32, tmp_path):
    m = wrap(resnet32, policy_model='policy_resnet8_tiny', policy_img_size=16).eval()
    timm.models.save_for_hf(m, tmp_path / 'out', safe_serialization=True)
    args = json.loads((tmp_path / 'out' / 'config.json').read_text())['model_args']
    assert (args['policy_model'], args['policy_img_size']) == ('policy_resnet8_tiny', 16)
    back = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(back.policy_probs(x), m.policy_probs(x))
    assert back.flops(torch.ones(1, m.num_blocks)).item() == m.flops(torch.ones(1, m.num_blocks)).item()


@pytest.mark.parametrize('base_name', ['resnet18', 'seresnext26d_32x4d'])
def test_any_wrapped_base_takes_a_cheap_policy(base_name):
    base = timm.create_model(base_name, pretrained=False).eval()
    m = wrap(base, policy_model='policy_resnet10', policy_img_size=56).eval()
    share = _policy_flops(m) / count_flops(base, torch.zeros(1, 3, 224, 224))
    assert share <= 0.05
    assert m(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
