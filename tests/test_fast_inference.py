"""Routed and fused inference (timm_blockdrop.models.routing, .fused): equal to the masked reference per sample,
never runs dropped blocks; fusion is explicit (``fuse()``, timm's reparameterize_model) and nothing is cached."""
import copy
import json

import pytest
import timm
import torch

import timm_blockdrop
from timm_blockdrop.tools.cli import main
from timm_blockdrop.models.fused import FusedBlock, FusedBlockDrop


@pytest.fixture(scope='module')
def r32(resnet32_file):
    base = timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet32_file)))
    return timm_blockdrop.wrap(base).eval()


def _policies(batch, k, seed):
    g = torch.Generator().manual_seed(seed)
    keeps = [torch.ones(batch, k), torch.zeros(batch, k), (torch.rand(batch, k, generator=g) < 0.3).float(),
             (torch.rand(batch, k, generator=g) < 0.7).float()]
    mixed = (torch.rand(batch, k, generator=g) < 0.5).float()
    mixed[0], mixed[-1] = 1, 0  # rows that keep all / drop all beside the others
    return keeps + [mixed]


@pytest.mark.parametrize('batch', [1, 7])
@pytest.mark.parametrize('channels_last', [False, True])
def test_routed_equals_masked_per_sample(r32, cifar_test_slice, batch, channels_last):
    x = cifar_test_slice[0][:batch]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fused = r32.fuse()
    for keep in _policies(batch, r32.num_blocks, seed=batch):
        with torch.no_grad():
            masked = r32.forward_with_policy(x, keep, mode='masked')
            routed = r32.forward_with_policy(x, keep)  # eval: routed, the model's own modules
            fast = fused.forward_with_policy(x, keep)  # the fused copy, same routing
            per_sample = torch.cat([fused.forward_with_policy(x[i:i + 1], keep[i:i + 1]) for i in range(batch)])
        plain = r32.forward_with_policy(x, keep, mode='routed')  # autograd on: the modules themselves
        assert torch.allclose(fast, masked, rtol=1e-4, atol=1e-4)
        assert torch.allclose(per_sample, masked, rtol=1e-4, atol=1e-4)
        assert torch.allclose(plain.detach(), masked, rtol=1e-5, atol=1e-5)
        assert torch.allclose(routed, masked, rtol=1e-5, atol=1e-5)
        assert torch.equal(fast.argmax(1), masked.argmax(1))


@pytest.mark.parametrize('name,shape', [('blockdrop_resnet18', (3, 3, 64, 64)), ('blockdrop_resnet50', (3, 3, 64, 64))])
def test_routed_equals_masked_imagenet_blocks(name, shape):
    """Bottlenecks and 1x1-conv downsamples (which dropped rows still pay for) route correctly too."""
    m = timm.create_model(name).eval()
    for mod in m.modules():  # non-trivial BN statistics, so that folding is exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(*shape)
    fused = timm.utils.reparameterize_model(torch.nn.Sequential(m))[0]  # timm's protocol: calls m.fuse()
    assert isinstance(fused, FusedBlockDrop) and fused.fused
    for keep in _policies(shape[0], m.num_blocks, seed=1):
        with torch.no_grad():
            ref = m.forward_with_policy(x, keep, mode='masked')
            fast = fused.forward_with_policy(x, keep)
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_eval_forward_uses_greedy_policy(r32, cifar_test_slice):
    x = cifar_test_slice[0][:16]
    torch.nn.init.constant_(r32.policy.fc.bias, 0.0)
    with torch.no_grad():
        fast = r32.fuse()(x)
        assert torch.allclose(r32(x), fast, rtol=1e-4, atol=1e-4)
        keep = (r32.policy_probs(x) >= r32.threshold).float()
        ref = r32.forward_with_policy(x, keep, mode='masked')
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-4)


def test_block_dropped_by_every_sample_never_runs(r32):
    engine = r32.fuse()
    calls = [0] * r32.num_blocks
    originals = []
    for i, block in enumerate(engine.kernels()):
        def counted(x, _i=i, _full=block.full):
            calls[_i] += x.shape[0]
            return _full(x)
        originals.append(block.full)
        block.full = counted
    try:
        keep = torch.ones(6, r32.num_blocks)
        keep[:, 3] = 0          # dropped by all
        keep[:2, 5] = 0         # kept by 4 of 6
        with torch.no_grad():
            engine.forward_with_policy(torch.randn(6, 3, 32, 32), keep)
    finally:
        for block, full in zip(engine.kernels(), originals):
            block.full = full
    assert calls[3] == 0 and calls[5] == 4 and calls[0] == 6


def test_module_path_never_runs_dropped_blocks(r32):
    calls = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls.get(k, 0) + i[0].shape[0]))
             for k, b in enumerate(r32.blocks)]
    try:
        keep = torch.ones(4, r32.num_blocks)
        keep[:, 7] = 0
        keep[1, 8] = 0
        r32.forward_with_policy(torch.randn(4, 3, 32, 32), keep, mode='routed')
    finally:
        for h in hooks:
            h.remove()
    assert 7 not in calls and calls[8] == 3 and calls[0] == 4


def _bn_eps(m):
    m.base.layer2[1].bn1.eps = 10.0


def _p_data(m):
    m.base.layer3[0].conv1.weight.data = m.base.layer3[0].conv1.weight.data * 0.5


def _new_parameter(m):
    m.base.layer1[2].conv2.weight = torch.nn.Parameter(torch.randn_like(m.base.layer1[2].conv2.weight) * 0.1)


def _prune(m):
    torch.nn.utils.prune.l1_unstructured(m.base.layer2[0].conv2, 'weight', amount=0.7)


def _policy_img_size(m):
    m.policy_img_size = 8


def _in_place(m):
    m.base.layer3[0].conv1.weight.mul_(0.5)


@pytest.mark.parametrize('edit', [_bn_eps, _p_data, _new_parameter, _prune, _in_place, _policy_img_size])
def test_no_cache_edits_after_fusing_reach_the_model_not_the_copy(r32, cifar_test_slice, edit):
    """Issue 13 item 1: m(x) has no engine to go stale. After a first eval call and a fuse(), every kind of edit of
    the original (the ones the old cached engine missed) shows in m(x); the fused copy keeps what it was made of."""
    import torch.nn.utils.prune  # noqa: F401  (registers torch.nn.utils.prune)
    m = copy.deepcopy(r32).eval()
    x = cifar_test_slice[0][:8]
    with torch.no_grad():
        if edit is _policy_img_size:
            torch.nn.init.normal_(m.policy.fc.weight, std=1.0)  # a policy that depends on the image
        else:
            torch.nn.init.normal_(m.policy.fc.bias, mean=3.0)  # every block kept: each edit shows in the logits
        before = m(x)
        fused = m.fuse()
        fused_before = fused(x)
        edit(m)
        after = m(x)
        keep = m.default_policy(x)
        reference = m.forward_with_policy(x, keep, mode='masked')  # the modules, no routing, no fusion
        assert not torch.allclose(before, after, atol=1e-3)
        assert torch.allclose(after, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(fused(x), fused_before)


def test_a_fused_copy_is_frozen(r32):
    fused = r32.fuse()
    assert not any(p.requires_grad for p in fused.parameters()) and not fused.training
    with pytest.raises(RuntimeError, match='inference-only'):
        fused.train()
    with pytest.raises(RuntimeError, match='move the model first'):
        fused.to(torch.float64)
    assert r32.fuse().model is not r32 and not hasattr(r32, '_engine')


NONFINITE = {
    'model': lambda m, f, x, keep: m(x),
    'model routed': lambda m, f, x, keep: m.forward_with_policy(x, keep),
    'model masked': lambda m, f, x, keep: m.forward_with_policy(x, keep, mode='masked'),
    'model routed, autograd on': lambda m, f, x, keep: torch.enable_grad()(m.forward_with_policy)(x, keep, 'routed'),
    'fused': lambda m, f, x, keep: f(x),
    'fused routed': lambda m, f, x, keep: f.forward_with_policy(x, keep),
    'fused full': lambda m, f, x, keep: f.forward_full(x),
}


@pytest.mark.parametrize('path', NONFINITE)
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_nonfinite_rows_stay_nonfinite(r32, cifar_test_slice, path, bad):
    """Issue 13 item 2: an image with one NaN or Inf pixel gets non-finite logits (as plain timm), the other rows not.

    The pixel sits at an odd position and its row drops every block, so a strided shortcut could skip it; the fused
    ReLU maps NaN to 0."""
    m = copy.deepcopy(r32).eval()
    fused = m.fuse()
    x = cifar_test_slice[0][:4].clone()
    x[1, 0, 5, 7] = bad
    x[2, 2, 31, 31] = bad
    keep = torch.ones(4, m.num_blocks)
    keep[1] = 0
    with torch.no_grad():
        out = NONFINITE[path](m, fused, x, keep)
    finite = torch.isfinite(out).all(1)
    assert finite.tolist() == [True, False, False, True], path


def test_unfusable_blocks_fall_back_to_their_modules():
    m = timm_blockdrop.wrap(timm.create_model('seresnet18')).eval()
    engine = m.fuse()
    assert all(b.fused is None for b in engine.kernels())  # squeeze-excite: not fused, still routed
    x = torch.randn(3, 3, 64, 64)
    keep = _policies(3, m.num_blocks, 2)[-1]
    with torch.no_grad():
        assert torch.allclose(engine.forward_with_policy(x, keep), m.forward_with_policy(x, keep, mode='masked'),
                              atol=1e-5)
    assert isinstance(engine.kernels()[0], FusedBlock)


def test_bench_end_to_end_writes_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', '--model', 'blockdrop_cifar_resnet20', '--batch-sizes', '1,4', '--repeats', '2',
                 '--threads', '1', '--json', str(out)]) == 0
    results = json.loads(out.read_text())['results']
    keys = {'model', 'batch_size', 'full_ms', 'full_timm_ms', 'full_fast_ms', 'masked_ms', 'routed_ms', 'ideal_ms',
            'flops_ratio', 'efficiency', 'policy_ms'}
    assert [r['batch_size'] for r in results] == [1, 4]
    for r in results:
        assert keys <= set(r)
        assert r['full_ms'] == min(r['full_timm_ms'], r['full_fast_ms'])
        assert r['ideal_ms'] == pytest.approx(r['full_ms'] * r['flops_ratio'])
        assert r['efficiency'] == pytest.approx(r['ideal_ms'] / r['routed_ms'])
        assert 0 < r['flops_ratio'] < 1
    assert 'efficiency' not in capsys.readouterr().err


@pytest.mark.parametrize('args,message', [
    (['--batch-sizes', '1,x'], 'comma-separated integers'),
    (['--keep', '1.5'], r'--keep must lie in \[0, 1\]'),
    (['--policy', 'greedy'], "'random' or 'learned'"),
])
def test_bench_bad_input(capsys, args, message):
    assert main(['bench', '--model', 'blockdrop_cifar_resnet20', '--repeats', '1', *args]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_bench_train_writes_throughputs(tmp_path):
    out = tmp_path / 'train.json'
    assert main(['bench', '--train', '--model', 'blockdrop_cifar_resnet20', '--batch-sizes', '8', '--repeats', '1',
                 '--threads', '1', '--json', str(out)]) == 0
    r = json.loads(out.read_text())['results'][0]
    assert r['batch_size'] == 8 and min(r['plain_ips'], r['curriculum_ips'], r['finetune_ips']) > 0
    assert r['finetune_ratio'] == pytest.approx(r['finetune_ips'] / r['plain_ips'])
    assert (r['precision'], r['layout']) == ('fp32', 'nchw')  # the default, unchanged


@pytest.mark.parametrize('flags,settings', [
    (['--precision', 'bf16'], [('bf16', 'nchw')]),
    (['--channels-last'], [('fp32', 'channels_last')]),
    (['--precision', 'bf16', '--channels-last', 'on'], [('bf16', 'channels_last')]),
    (['--precision', 'fp32,bf16', '--channels-last', 'both'],  # all four, timed in the same interleaved rounds
     [('fp32', 'nchw'), ('fp32', 'channels_last'), ('bf16', 'nchw'), ('bf16', 'channels_last')]),
])
def test_bench_train_precision_and_layout(tmp_path, flags, settings):
    out = tmp_path / 'train.json'
    assert main(['bench', '--train', '--model', 'cifar_resnet20', '--batch-sizes', '8', '--repeats', '1',
                 '--threads', '1', '--json', str(out), *flags]) == 0
    rows = json.loads(out.read_text())['results']
    assert [(r['precision'], r['layout']) for r in rows] == settings
    assert all(min(r['plain_ips'], r['curriculum_ips'], r['finetune_ips']) > 0 for r in rows)


@pytest.mark.parametrize('flags,message', [
    (['--train', '--precision', 'fp16'], "--precision must be one or more of fp32, bf16 .* got 'fp16'"),
    (['--train', '--precision', 'fp32,'], '--precision must be one or more of fp32, bf16'),
    (['--precision', 'bf16'], '--precision and --channels-last time training steps: add --train'),
    (['--channels-last'], '--precision and --channels-last time training steps: add --train'),
])
def test_bench_train_bad_precision(capsys, flags, message):
    assert main(['bench', '--model', 'cifar_resnet20', '--batch-sizes', '8', '--repeats', '1', *flags]) == 2
    import re
    err = capsys.readouterr().err
    assert re.search(message, err) and 'Traceback' not in err


def test_fused_copy_copies_and_pickles(tmp_path):
    m = timm.create_model('blockdrop_cifar_resnet20').eval().fuse()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)  # packs the oneDNN weights
    c = copy.deepcopy(m)
    torch.save(m, tmp_path / 'm.pt')
    loaded = torch.load(tmp_path / 'm.pt', weights_only=False)
    with torch.no_grad():
        assert torch.equal(c(x), ref) and torch.equal(loaded(x), ref)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_nonfinite_rows_exact_in_every_float_dtype(dtype):
    """The cheap row check (x * 0 summed per row) finds NaN, +Inf and -Inf rows and nothing else: not rows of
    large finite values whose plain sum overflows (fp16's range ends at 65504), nor rows of mixed signs."""
    from timm_blockdrop.models.routing import nonfinite_rows
    big = torch.finfo(dtype).max
    x = torch.zeros(6, 3, 8, 8, dtype=dtype)
    x[0] = big
    x[1, 0] = big
    x[1, 1] = -big
    x[2, 1, 3, 3] = float('nan')
    x[3, 2, 7, 0] = float('inf')
    x[4, 0, 0, 1] = -float('inf')
    assert nonfinite_rows(x).tolist() == [False, False, True, True, True, False]
    assert nonfinite_rows(x.contiguous(memory_format=torch.channels_last)).tolist() == \
        [False, False, True, True, True, False]


def test_one_image_routing_plan_is_the_general_plan():
    from timm_blockdrop.models.routing import Routing
    keep = torch.tensor([[1, 0, 0, 1, 1]])
    assert Routing(keep).plan == ['all', 'none', 'none', 'all', 'all']
    two = Routing(torch.cat([keep, keep]))
    assert Routing(keep.float()).plan == two.plan == Routing(keep.bool()).plan


def test_fused_head_is_the_models_head(r32, cifar_test_slice):
    """The fused copy's average pool + linear (one mean, one addmm) gives the model's own head's logits."""
    fused = copy.deepcopy(r32).eval().fuse()
    h = torch.randn(5, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fused.forward_head(h), r32.forward_head(h), rtol=1e-5, atol=1e-5)
    assert type(fused._base.head).__name__ == '_AvgLinearHead'
