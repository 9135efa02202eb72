"""Greedy, bounded and sampled policies (Sec. 3.3) and the heuristic baselines (Sec. 4.2)."""
import pytest
import torch

from timm_blockdrop import policies


def test_greedy_keeps_at_or_above_threshold():
    p = torch.tensor([[0.2, 0.5, 0.8]])
    assert policies.greedy(p).tolist() == [[0.0, 1.0, 1.0]]
    assert policies.greedy(p, 0.9).tolist() == [[0.0, 0.0, 0.0]]


def test_bounded_probabilities_hand_computed():
    p = torch.tensor([0.0, 0.5, 1.0, 0.9])
    assert torch.allclose(policies.bounded(p, 0.8), torch.tensor([0.2, 0.5, 0.8, 0.74]))
    assert torch.equal(policies.bounded(p, 1.0), p)


def test_sample_respects_bound_and_straight_through_gradient():
    torch.manual_seed(0)
    p = torch.full((20000, 1), 1.0, requires_grad=True)
    u = policies.sample(p, 0.8)
    assert u.mean().item() == pytest.approx(0.8, abs=0.01)
    st = policies.straight_through(p, 0.8)
    assert set(st.detach().unique().tolist()) <= {0.0, 1.0}
    st.sum().backward()
    assert torch.equal(p.grad, torch.ones_like(p))


@pytest.mark.parametrize('name', ['firstk', 'randomk', 'distributek'])
@pytest.mark.parametrize('k', [0, 4, 15])
def test_heuristics_keep_exactly_k(name, k):
    keep = policies.heuristic_policy(name, 6, 15, k, stage_sizes=(5, 5, 5))
    assert keep.shape == (6, 15) and keep.sum(1).tolist() == [k] * 6


def test_firstk_and_distributek_layout():
    assert policies.firstk(1, 6, 2)[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert policies.distributek(1, 15, 7, stage_sizes=(5, 5, 5))[0].tolist() == \
        [1, 1, 1, 0, 0] + [1, 1, 0, 0, 0] + [1, 1, 0, 0, 0]
    # ResNet-101: short segments pass their surplus share on
    keep = policies.distributek(1, 33, 20, stage_sizes=(3, 4, 23, 3))[0]
    assert [int(keep[a:b].sum()) for a, b in ((0, 3), (3, 7), (7, 30), (30, 33))] == [3, 4, 10, 3]


def test_randomk_differs_per_image_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    a = policies.randomk(8, 15, 7, generator=g)
    b = policies.randomk(8, 15, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len({tuple(r.tolist()) for r in a}) > 1


def test_one_randomk_per_sample_seeds_as_training_draws_them():
    """Training's RandomK (per-row seeds) is policies.randomk: the blocks the released runs were trained with
    (recorded from the former reinforce.fixed_keep), whatever rows share the batch."""
    seeds = torch.tensor([7, 11, 13, 2 ** 40 + 3])
    keep = policies.heuristic_policy('randomk', 4, 15, 5, seeds=seeds)
    assert [r.nonzero().flatten().tolist() for r in keep] == [
        [1, 4, 6, 12, 13], [0, 3, 7, 10, 12], [0, 3, 4, 9, 10], [0, 1, 3, 5, 14]]
    assert torch.equal(policies.randomk(2, 15, 5, seeds=[13, 7]), keep[[2, 0]])
    assert torch.equal(policies.row_uniforms([11], 15), policies.row_uniforms(seeds, 15)[1:2])
    with pytest.raises(ValueError, match='one seed per row'):
        policies.randomk(3, 15, 5, seeds=[1, 2])


def test_randomk_with_a_range_draws_each_images_k_from_its_seed():
    """RandomK with k_max (a base robust at several depths): every k in [k, k_max] occurs, about equally often,
    each row's k and blocks depend on its seed alone, and without k_max the draw is the released runs' draw."""
    seeds = torch.arange(4000)
    keep = policies.heuristic_policy('randomk', 4000, 15, 4, seeds=seeds, k_max=10)
    counts = torch.bincount(keep.sum(1).long(), minlength=16)
    assert counts[:4].sum() == 0 and counts[11:].sum() == 0
    assert counts[4:11].min() > 4000 / 7 * 0.8 and counts[4:11].max() < 4000 / 7 * 1.2
    assert torch.equal(policies.randomk(3, 15, 4, seeds=[9, 3, 1000], k_max=10), keep[[9, 3, 1000]])
    assert torch.equal(policies.randomk(4, 15, 5, seeds=[7, 11, 13, 2 ** 40 + 3], k_max=5).sum(1), torch.full((4,), 5.))
    assert len({tuple(r.tolist()) for r in keep[:50]}) == 50
    g = policies.randomk(2000, 15, 2, generator=torch.Generator().manual_seed(0), k_max=3).sum(1)
    assert set(g.tolist()) == {2.0, 3.0}
    with pytest.raises(ValueError, match=r'the largest k \(3\) must not be below the smallest \(5\)'):
        policies.randomk(2, 15, 5, k_max=3)
    with pytest.raises(ValueError, match=r'k must lie in \[0, K\] = \[0, 15\], got 16'):
        policies.randomk(2, 15, 5, k_max=16)
    with pytest.raises(ValueError, match="a range of k .* is for policy 'randomk', not 'distributek'"):
        policies.heuristic_policy('distributek', 2, 15, 5, stage_sizes=(5, 5, 5), k_max=7)


@pytest.mark.parametrize('k', [-1, 16])
def test_k_outside_range(k):
    with pytest.raises(ValueError, match=r'k must lie in \[0, K\] = \[0, 15\]'):
        policies.heuristic_policy('firstk', 2, 15, k)


def test_unknown_policy_name():
    with pytest.raises(ValueError, match="unknown policy 'lastk'"):
        policies.heuristic_policy('lastk', 2, 15, 3)
