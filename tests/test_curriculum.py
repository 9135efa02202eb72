"""The curriculum schedule (paper Sec. 3.3, Alg. 1 lines 6-8): which blocks the policy decides at epoch t."""
import pytest
import torch

from timm_blockdrop.train.curriculum import (check_cl_step, decided_mask, first_full_epoch, force_prefix, num_decided,
                                       num_forced)


def test_paper_schedule_keeps_the_first_k_minus_t_blocks_on():
    """Epoch t (1-based) with 1 <= t < K keeps the first K - t blocks on; from t >= K the policy decides all."""
    K = 15
    for t in range(1, K):
        assert num_forced(t - 1, K) == K - t
        assert num_decided(t - 1, K) == t
    for t in (K, K + 1, 5000):
        assert num_forced(t - 1, K) == 0 and num_decided(t - 1, K) == K


def test_cl_step_hands_several_blocks_per_epoch():
    K = 15
    assert [num_decided(e, K, cl_step=4) for e in range(6)] == [4, 8, 12, 15, 15, 15]
    assert [num_forced(e, K, cl_step=4) for e in range(4)] == [11, 7, 3, 0]
    assert first_full_epoch(K, 1) == 14 and first_full_epoch(K, 4) == 3 and first_full_epoch(K, 15) == 0
    assert first_full_epoch(33, 1) == 32  # ResNet-101: all blocks from epoch 33 (1-based) of 45 in the paper
    assert num_decided(first_full_epoch(K, 4), K, 4) == K and num_decided(first_full_epoch(K, 4) - 1, K, 4) < K


def test_force_prefix_and_decided_mask():
    keep = torch.tensor([[0., 1., 0., 0.], [0., 0., 1., 1.]])
    forced = force_prefix(keep, 2)
    assert forced.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert keep.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]  # the input is not modified
    assert force_prefix(keep, 0).tolist() == keep.tolist() and force_prefix(keep, 4).tolist() == [[1] * 4] * 2
    assert decided_mask(1, 4).tolist() == [False, True, True, True]
    assert decided_mask(0, 3).all() and not decided_mask(3, 3).any()


@pytest.mark.parametrize('call, match', [
    (lambda: num_decided(-1, 15), 'epoch'),
    (lambda: num_decided(0.5, 15), 'epoch'),
    (lambda: num_decided(0, 15, cl_step=0), 'cl_step'),
    (lambda: check_cl_step(1.5), 'cl_step'),
    (lambda: force_prefix(torch.ones(2, 4), 5), 'n_forced'),
    (lambda: decided_mask(-1, 4), 'n_forced'),
])
def test_bad_schedule_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
