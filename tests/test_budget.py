"""The block budget (issue 11 item 3): dual ascent on the block cost brings the greedy policy to the target."""
import pytest
import torch

from timm_blockdrop.models.policies import bounded, greedy
from timm_blockdrop.train.budget import BlockBudget
from timm_blockdrop.train.reinforce import bernoulli_log_prob
from timm_blockdrop.train.reward import advantage, reward

K = 15


def _train_toy_policy(budget, steps=400, seed=0):
    """REINFORCE on K free logits against a toy 'ResNet' whose accuracy grows with the blocks 0-9 it runs.

    Block j < 10 is worth v_j = (10 - j) / 55 of accuracy (image i is right when the kept blocks' v add up to its
    t_i, spread evenly over (0, 1]); blocks 10-14 are worth nothing. The paper's reward with gamma 5 then keeps
    exactly blocks 0-9; a budget below 10 blocks must trade accuracy for blocks, the least useful first.
    """
    torch.manual_seed(seed)
    value = torch.cat([torch.arange(10, 0, -1) / 55.0, torch.zeros(K - 10)])
    need = (torch.arange(256) + 1) / 256 - 1e-6
    logits = torch.zeros(K, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        probs = torch.sigmoid(logits).expand(256, K)
        probs_b = bounded(probs, 0.8)
        keep = torch.bernoulli(probs_b.detach())
        keep_greedy = greedy(probs.detach())
        right = lambda u: u @ value >= need  # noqa: E731
        r, r_greedy = reward(keep, right(keep), 5.0), reward(keep_greedy, right(keep_greedy), 5.0)
        if budget is not None:
            r, r_greedy = r - budget.penalty(keep), r_greedy - budget.penalty(keep_greedy)
        loss = (-bernoulli_log_prob(probs_b, keep).sum(1) * advantage(r, r_greedy)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if budget is not None:
            budget.update(budget.cost(keep_greedy).mean().item())
    return greedy(torch.sigmoid(logits.detach()))


def test_without_a_budget_the_toy_policy_keeps_the_blocks_it_needs():
    assert _train_toy_policy(None).sum().item() == 10


@pytest.mark.parametrize('target', [7, 4])
def test_the_budget_reaches_its_target(target):
    """Tolerance: the greedy policy keeps the target number of blocks, +- 1."""
    budget = BlockBudget(target, K, lr=0.5)
    keep = _train_toy_policy(budget)
    blocks = keep.sum().item()
    assert abs(blocks - target) <= 1, f'{blocks} blocks for a budget of {target}'
    assert keep[:int(blocks)].all(), f'the budget should drop the least useful blocks first: {keep.tolist()}'
    assert budget.price > 0


def test_a_flops_budget_weighs_blocks_by_their_cost():
    w = [1.0] * 5 + [3.0] * 10  # the last 10 blocks cost 3x as much
    b = BlockBudget(0.5, K, weights=w)
    keep = torch.zeros(2, K)
    keep[0, :5] = 1
    keep[1, 5:] = 1
    assert b.cost(keep).tolist() == pytest.approx([5 / 35, 30 / 35])


def test_the_price_never_goes_negative_and_round_trips():
    b = BlockBudget(7, K, lr=0.5)
    assert b.update(0.0) == 0.0
    b.update(1.0)
    state = b.state_dict()
    c = BlockBudget(7, K, lr=0.5)
    c.load_state_dict(state)
    assert c.price == b.price == pytest.approx(0.5 * (1 - 7 / 15))


@pytest.mark.parametrize('kwargs, message', [
    (dict(target=16), 'budget_blocks'), (dict(target=-1), 'budget_blocks'),
    (dict(target=0.5, weights=[1.0] * 3), 'per-block costs'), (dict(target=2.0, weights=[1.0] * K), 'budget_flops'),
    (dict(target=7, lr=0.0), 'budget_lr'),
])
def test_bad_budgets_are_refused_with_a_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockBudget(num_blocks=K, **kwargs)


# ---- the budget in the recipes, on real CIFAR-10 images and the shared ResNet-32 ----

BUDGET = 6          # blocks, of K = 15 (without a budget this run's policy keeps about 9)
BUDGET_TOLERANCE = 1.5  # blocks: the greedy policy's mean on the eval images at the end of a 32-step run


def test_a_budgeted_curriculum_run_reaches_its_target(tmp_path, shared):
    """A policy that starts above the budget (about 9 blocks on these images) must come down to it; the price is logged and
    resumed with the run."""
    from test_recipes import CL_CONFIG, RUN_ARGS, _lines, _recipe
    out = tmp_path / 'budget'
    args = ['--config', CL_CONFIG, '--output-dir', out, *RUN_ARGS[:-2], '--epochs', '4', '--set', 'cl_step=15',
            '--set', 'policy_init_keep=0.75', '--set', 'lr=0.05', '--set', 'min_lr=0.05',
            '--set', f'budget_blocks={BUDGET}', '--set', 'budget_lr=0.5']
    _recipe('curriculum', *args)
    steps = _lines(out / 'steps.jsonl')
    assert steps[0]['budget_price'] > 0 and max(s['budget_price'] for s in steps) > 0.5
    final = _lines(out / 'metrics.jsonl')[-1]
    assert abs(final['val_blocks_mean'] - BUDGET) <= BUDGET_TOLERANCE, final


def test_a_budget_of_zero_blocks_is_a_budget_and_is_checkpointed():
    """budget_blocks: 0 is a valid budget (the config allows it): it must not be taken for 'no budget'."""
    from types import SimpleNamespace

    from timm_blockdrop.train.budget import block_budget
    registered = []
    accelerator = SimpleNamespace(register_for_checkpointing=registered.append)
    assert block_budget(SimpleNamespace(budget_blocks=None, budget_lr=0.05), K, accelerator) is None
    budget = block_budget(SimpleNamespace(budget_blocks=0, budget_lr=0.05), K, accelerator)
    assert budget is not None and budget.target == 0 and registered == [budget]
