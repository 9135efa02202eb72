"""The policy on the base's stem features (issue 11 item 4, ``policy_stem_head``): no convolution of its own, only
its head counted in flops(), the stem computed once by the fused forward, no policy gradient into the stem, saved
and rebuilt, on CIFAR and ImageNet-style bases."""
import json

import pytest
import timm
import torch

import timm_blockdrop  # noqa: F401  (registers the models)
from timm_blockdrop import wrap
from timm_blockdrop.models.flops import count_flops

from conftest import RESNET_FILES


@pytest.fixture(scope='module')
def resnet32():
    return timm.create_model('cifar_resnet32', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[32]))).eval()


@pytest.fixture(scope='module')
def model(resnet32):
    torch.manual_seed(0)
    m = wrap(resnet32, policy_model='policy_stem_head').eval()
    with torch.no_grad():  # a head that keeps about half the blocks, varying by image
        m.policy.fc.weight.mul_(40)
    return m


def _head_flops(policy):
    """2 FLOPs per multiply-add of the head's two Linear layers."""
    return 2 * sum(fc.in_features * fc.out_features for fc in (policy.fc1, policy.fc))


def test_it_reads_the_stem_and_has_no_convolution(model):
    assert model.policy_reads_stem and model.policy.in_chans == 16  # CIFAR ResNet stem: 16 channels
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.policy.modules())
    assert model._model_args['policy_img_size'] is None
    assert 'policy.conv1' not in model.pretrained_cfg['first_conv']


def test_flops_count_the_head_only(model, resnet32):
    """The stem is the base's (in the FLOPs table already); counting the policy through policy_probs would add it
    twice."""
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        base = count_flops(resnet32, x)[0]
    keep_all = torch.ones(1, model.num_blocks)
    policy = model.flops(keep_all).item() - model.flops(keep_all, include_policy=False).item()
    assert policy == _head_flops(model.policy) == 34688
    assert model.flops(keep_all, include_policy=False).item() == pytest.approx(base, rel=1e-6)
    assert policy / base < 0.001


def test_fused_forward_matches_the_model_and_shares_the_stem(model):
    x = torch.randn(16, 3, 32, 32)
    fused = model.fuse()
    with torch.no_grad():
        keep = model.default_policy(x)
        want = model.forward_with_policy(x, keep)
        logits, fused_keep = fused.forward_and_policy(x)
    assert 0 < keep.float().mean() < 1 and len({tuple(r.tolist()) for r in keep}) > 1  # a policy that varies
    assert torch.equal(fused_keep.bool(), keep.bool())
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused(x), want, rtol=1e-4, atol=1e-4)
    other = 1 - keep.int()  # a given policy replaces the network's decisions (bench's random policies)
    with torch.no_grad():
        logits, used = fused.forward_and_policy(x, other)
        torch.testing.assert_close(logits, model.forward_with_policy(x, other), rtol=1e-4, atol=1e-4)
    assert torch.equal(used, other)
    calls, stem_calls = [], []
    head, stem = fused._stem_head, fused._base.features_in
    fused._stem_head = lambda t: calls.append(1) or head(t)
    fused._base.features_in = lambda t: stem_calls.append(1) or stem(t)
    try:
        fused(x)
    finally:
        fused._stem_head = head
        del fused._base.features_in
    assert (len(calls), len(stem_calls)) == (1, 1)  # one stem for both the policy and the blocks


def test_the_policy_loss_does_not_train_the_stem(model):
    m = wrap(timm.create_model('cifar_resnet20'), policy_model='policy_stem_head').train()
    probs = m.policy_probs(torch.randn(8, 3, 32, 32))
    torch.log(probs).sum().backward()
    assert m.policy.fc1.weight.grad is not None and m.policy.fc1.weight.grad.abs().sum() > 0
    assert m.base.conv1.weight.grad is None and m.base.bn1.weight.grad is None


def test_an_image_size_for_a_stem_policy_is_refused(resnet32):
    with pytest.raises(ValueError, match="reads the base's stem features: leave policy_img_size None"):
        wrap(resnet32, policy_model='policy_stem_head', policy_img_size=16)


def test_saved_and_rebuilt(model, tmp_path):
    timm.models.save_for_hf(model, tmp_path / 'out', safe_serialization=True)
    args = json.loads((tmp_path / 'out' / 'config.json').read_text())['model_args']
    assert (args['policy_model'], args['policy_img_size']) == ('policy_stem_head', None)
    back = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.policy_probs(x), model.policy_probs(x))
        assert torch.equal(back(x), model(x))


def test_an_imagenet_base_takes_it():
    base = timm.create_model('resnet18', pretrained=False).eval()
    m = wrap(base, policy_model='policy_stem_head').eval()
    assert m.policy.in_chans == 64 and m._model_args['policy_img_size'] is None  # 'auto' gives no resize
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(m.fuse()(x), m(x), rtol=1e-4, atol=1e-4)
    share = (m.flops(torch.ones(1, m.num_blocks)) / m.flops(torch.ones(1, m.num_blocks), include_policy=False) - 1)
    assert 0 < share.item() < 0.001


def test_fused_head_kernels_are_the_head(model):
    """The fused copy runs the stem head as one mean and two addmm on the channels_last stem output, fc1's columns
    reordered; the same logits as the module, and the module's adaptive pooling where the windows are uneven."""
    fused = model.fuse()
    kernels = fused._stem_head
    assert type(kernels).__name__ == '_StemHeadKernels'
    for size in (32, 8, 30):  # 30: 4 uneven windows, the module's own pooling
        stem = torch.randn(3, 16, size, size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(kernels(stem), model.policy(stem), rtol=1e-5, atol=1e-5)


def test_joint_finetuning_runs_the_stem_once_per_step():
    """FinetuneRollout hands the stem output it computes for the blocks to a policy on the stem: one stem forward
    per step, so its BatchNorm statistics move once per step (as for any other policy), and the policy's
    probabilities are those of policy_probs."""
    from timm_blockdrop.train.reinforce import FinetuneRollout
    torch.manual_seed(0)
    m = wrap(timm.create_model('cifar_resnet20'), policy_model='policy_stem_head')
    rollout = FinetuneRollout(m, 'routed').train()
    before = int(m.base.bn1.num_batches_tracked)
    x = torch.randn(8, 3, 32, 32)
    out = rollout(x, torch.arange(8))
    assert int(m.base.bn1.num_batches_tracked) == before + 1
    m.eval()
    with torch.no_grad():
        want = m.policy_probs(x)
        rollout.eval()
        got = rollout(x, torch.arange(8))['probs']
    torch.testing.assert_close(got, m.alpha * want + (1 - m.alpha) * (1 - want))
    assert out['logits'].requires_grad
