"""FLOPs as the paper counts them (2 x MACs of conv/linear, per image, policy included when it runs)."""
import pytest
import timm
import torch


def _full_and_policy(name):
    table, policy = timm.create_model(name).flops_table()
    return table.full, policy


def test_resnet110_and_its_policy():
    full, policy = _full_and_policy('blockdrop_cifar_resnet110')
    assert full == pytest.approx(5.06e8, rel=0.02)  # paper Table 3
    assert policy / full == pytest.approx(0.048, abs=0.002)  # paper Sec. 4.1: 4.8 %


def test_resnet101_and_its_policy():
    full, policy = _full_and_policy('blockdrop_resnet101')
    assert full == pytest.approx(1.56e10, rel=0.02)  # paper Table 4
    assert policy / full == pytest.approx(0.030, abs=0.002)  # paper Sec. 4.1: 3.0 %


def test_resnet32_full():
    assert _full_and_policy('blockdrop_cifar_resnet32')[0] == pytest.approx(1.38e8, rel=0.02)  # paper Table 3


def test_flops_linear_in_keep_and_policy_counted():
    m = timm.create_model('blockdrop_cifar_resnet32')
    table, policy = m.flops_table()
    keep = torch.tensor([[1.0] * 15, [0.0] * 15, [1.0] * 5 + [0.0] * 10])
    f = m.flops(keep)
    assert f[0] == table.full + policy
    assert f[1] == table.stem + table.head + policy  # option-A shortcuts are free
    assert f[2] == table.stem + table.head + sum(table.blocks[:5]) + policy
    assert torch.equal(m.flops(keep, include_policy=False), f - policy)
    assert f.dtype == torch.float64 and f.shape == (3,)


def test_dropped_block_still_pays_its_downsample():
    m = timm.create_model('blockdrop_resnet18')
    table, _ = m.flops_table()
    # layer2.0 (block 2) has a 1x1 stride-2 conv 64->128 + BN: 2 * 64 * 128 * 28 * 28 FLOPs at 224 px
    assert table.shortcuts[2] == 2 * 64 * 128 * 28 * 28
    assert table.shortcuts[1] == 0 and table.blocks[2] > table.shortcuts[2]
    keep = torch.ones(1, 8)
    keep[0, 2] = 0
    assert m.flops(keep, include_policy=False)[0] == table.full - table.blocks[2] + table.shortcuts[2]


def test_flops_at_other_input_size_and_modes_untouched():
    m = timm.create_model('blockdrop_cifar_resnet20').train()
    small, _ = m.flops_table(16)
    full, _ = m.flops_table()
    assert small.full < full.full
    assert m.training and m.base.bn1.training  # counting does not flip train/eval flags
    assert int(m.base.bn1.num_batches_tracked) == 0  # nor update BN statistics
