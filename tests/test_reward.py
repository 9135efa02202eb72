"""Reward (Eq. 3), self-critical advantage (Eq. 6), bounded probabilities, the REINFORCE losses and the two
stages' rollouts, against values computed by hand."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_blockdrop
from timm_blockdrop.models.policies import bounded, check_alpha
from timm_blockdrop.models.routing import paired_logits
from timm_blockdrop.train.reinforce import (CurriculumRollout, FinetuneRollout, bernoulli_log_prob, curriculum_loss,
                                            distill_loss, entropy, policy_gradient_loss, rewards, row_uniforms,
                                            sample_with)
from timm_blockdrop.train.reward import advantage, block_usage, check_gamma, reward

from conftest import RESNET_FILES


def test_reward_eq3_by_hand():
    keep = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    correct = torch.tensor([True, True, True, False, False])
    # 1 - (2/4)^2 = 0.75; 1 - 1 = 0; 1 - 0 = 1; wrong: -gamma whatever the blocks
    assert reward(keep, correct, gamma=5).tolist() == [0.75, 0.0, 1.0, -5.0, -5.0]
    assert reward(keep, correct, gamma=0).tolist() == [0.75, 0.0, 1.0, 0.0, 0.0]
    assert block_usage(keep).tolist() == [0.5, 1.0, 0.0, 0.75, 1.0]
    k15 = torch.zeros(1, 15)
    k15[0, :7] = 1
    assert reward(k15, torch.tensor([True]), 1).item() == pytest.approx(1 - (7 / 15) ** 2)


def test_self_critical_advantage_by_hand():
    keep_sampled = torch.tensor([[1., 0., 0., 0.], [1., 1., 1., 0.]])
    keep_greedy = torch.tensor([[1., 1., 1., 1.], [1., 1., 0., 0.]])
    r_u = reward(keep_sampled, torch.tensor([True, False]), gamma=2)    # 1 - 1/16, -2
    r_g = reward(keep_greedy, torch.tensor([True, True]), gamma=2)      # 0, 1 - 4/16
    a = advantage(r_u, r_g)
    assert a.tolist() == pytest.approx([15 / 16 - 0.0, -2.0 - 0.75])
    assert not a.requires_grad
    x = torch.tensor([0.3, 0.1], requires_grad=True)
    assert not advantage(x * 2, x).requires_grad


def test_bounded_probabilities_by_hand():
    s = torch.tensor([0.0, 0.5, 1.0, 0.25])
    assert bounded(s, 0.8).tolist() == pytest.approx([0.2, 0.5, 0.8, 0.35])  # 0.8*0.25 + 0.2*0.75
    assert bounded(s, 1.0).tolist() == s.tolist()
    b = bounded(torch.rand(1000), 0.7)
    assert b.min() >= 0.3 - 1e-6 and b.max() <= 0.7 + 1e-6


@pytest.mark.parametrize('alpha', [0.5, 0.3, 1.01, -1])
def test_alpha_outside_half_open_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r'alpha must lie in \(0.5, 1\]'):
        check_alpha(alpha)


@pytest.mark.parametrize('gamma', [-1, -0.1, float('nan'), 'x'])
def test_negative_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match='gamma'):
        check_gamma(gamma)
    with pytest.raises(ValueError, match='gamma'):
        reward(torch.ones(1, 3), torch.tensor([False]), gamma)


def test_log_prob_and_entropy_by_hand():
    s = torch.tensor([[0.8, 0.35]])
    u = torch.tensor([[1., 0.]])
    assert bernoulli_log_prob(s, u).tolist()[0] == pytest.approx([math.log(0.8), math.log(0.65)])
    assert entropy(s, 'reference').tolist()[0] == pytest.approx([-0.8 * math.log(0.8), -0.35 * math.log(0.35)])
    full = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (0.8, 0.35)]
    assert entropy(s, 'bernoulli').tolist()[0] == pytest.approx(full)
    with pytest.raises(ValueError, match='entropy'):
        entropy(s, 'shannon')


def test_curriculum_loss_by_hand():
    """(sum over decided blocks of -log pi(u) A - beta * sum of -s' log s') / B, with B = 2, K = 3, 1 forced."""
    s = torch.tensor([[0.8, 0.3, 0.6], [0.5, 0.2, 0.7]], requires_grad=True)
    u = torch.tensor([[1., 0., 1.], [1., 1., 0.]])
    adv = torch.tensor([2.0, -1.0])
    pg = -(math.log(0.7) + math.log(0.6)) * 2.0 - (math.log(0.2) + math.log(0.3)) * -1.0
    ent = sum(-p * math.log(p) for p in (0.8, 0.3, 0.6, 0.5, 0.2, 0.7))
    loss = curriculum_loss(s, u, adv, n_forced=1, beta=0.1)
    assert loss.item() == pytest.approx((pg - 0.1 * ent) / 2, rel=1e-6)
    # without the entropy bonus, the forced block gets no gradient at all
    curriculum_loss(s, u, adv, n_forced=1, beta=0.0).backward()
    assert s.grad[:, 0].abs().sum() == 0 and s.grad[:, 1:].abs().sum() > 0


def test_policy_gradient_loss_by_hand():
    """weight = batch size gives the reference's sum over the batch; beta adds the entropy bonus."""
    s = torch.tensor([[0.8, 0.3], [0.5, 0.2]])
    u = torch.tensor([[1., 0.], [0., 1.]])
    adv = torch.tensor([1.5, -0.5])
    pg = -(math.log(0.8) + math.log(0.7)) * 1.5 - (math.log(0.5) + math.log(0.2)) * -0.5
    assert policy_gradient_loss(s, u, adv, weight=2).item() == pytest.approx(pg, rel=1e-6)
    assert policy_gradient_loss(s, u, adv, weight=1).item() == pytest.approx(pg / 2, rel=1e-6)
    ent = sum(-p * math.log(p) for p in (0.8, 0.3, 0.5, 0.2)) / 2
    assert policy_gradient_loss(s, u, adv, weight=2, beta=0.1).item() == pytest.approx(pg - 0.1 * ent, rel=1e-6)


def test_sampling_from_per_row_seeds():
    """A row's uniforms depend on its seed only: the same sample draws the same policy in any batch."""
    a = row_uniforms(torch.tensor([7, 11, 13]), 15)
    b = row_uniforms([13, 7], 15)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    probs = torch.tensor([[0.2, 0.8, 0.5]])
    assert sample_with(probs, torch.tensor([[0.1, 0.9, 0.5]])).tolist() == [[1, 0, 0]]
    freq = sample_with(torch.full((1, 20000), 0.35), row_uniforms([3], 20000)).mean().item()
    assert freq == pytest.approx(0.35, abs=0.02)


@pytest.fixture(scope='module')
def resnet20():
    base = timm.create_model('cifar_resnet20', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))
    torch.manual_seed(0)
    return timm_blockdrop.wrap(base)


def test_paired_logits_equal_two_separate_passes(resnet20, cifar_test_slice):
    model = resnet20.eval()
    images = cifar_test_slice[0][:12]
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(12, 9, generator=g) < 0.5).float()
    b = (torch.rand(12, 9, generator=g) < 0.5).float()
    b[:3] = a[:3]            # rows that agree everywhere
    a[:, :4] = b[:, :4] = 1  # a forced prefix
    with torch.inference_mode():
        la, lb = paired_logits(model, images, a, b)
        ra = model.forward_with_policy(images, a, mode='masked')
        rb = model.forward_with_policy(images, b, mode='masked')
    assert torch.allclose(la, ra, atol=1e-5) and torch.allclose(lb, rb, atol=1e-5)


def test_curriculum_rollout(resnet20, cifar_test_slice):
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    rollout = CurriculumRollout(resnet20).train()
    assert not rollout.model.base.training and rollout.model.policy.training
    seeds = torch.arange(16)
    out = rollout(images, seeds, n_forced=6)
    assert out['keep'][:, :6].eq(1).all() and out['keep_greedy'][:, :6].eq(1).all()  # the forced prefix
    with torch.inference_mode():  # the logits are those of the ResNet under the sampled and the greedy policy
        want = resnet20.forward_with_policy(images, out['keep'])
        want_greedy = resnet20.forward_with_policy(images, out['keep_greedy'])
    assert torch.allclose(out['logits'], want, atol=1e-5) and torch.allclose(out['logits_greedy'], want_greedy,
                                                                             atol=1e-5)
    r, correct, adv = rewards(out, labels, 1.0)
    assert torch.equal(correct, want.argmax(1) == labels) and torch.allclose(r, reward(out['keep'], correct, 1.0))
    assert torch.allclose(adv, r - reward(out['keep_greedy'], want_greedy.argmax(1) == labels, 1.0))
    resnet20.zero_grad(set_to_none=True)
    curriculum_loss(out['probs'], out['keep'], adv, 6).backward()
    assert all(p.grad is not None for p in resnet20.policy.parameters())
    assert all(p.grad is None and not p.requires_grad for p in resnet20.base.parameters())
    again = rollout(images, seeds, n_forced=6)
    assert torch.equal(again['keep'], out['keep'])  # same seeds, same policy: the randomness is per sample


def test_finetune_rollout(resnet20, cifar_test_slice):
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    rollout = FinetuneRollout(resnet20).train()
    assert rollout.model.base.training
    resnet20.zero_grad(set_to_none=True)
    out = rollout(images, torch.arange(16))
    r, _, adv = rewards(out, labels, 5.0)
    (policy_gradient_loss(out['probs'], out['keep'], adv, 16) + F.cross_entropy(out['logits'], labels)).backward()
    allowed = torch.tensor([-5.0] + [1 - (k / 9) ** 2 for k in range(10)])
    assert ((r[:, None] - allowed).abs().min(1).values < 1e-6).all()
    assert all(p.grad is not None for p in resnet20.policy.parameters())
    assert all(p.grad is not None for p in resnet20.base.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="mode must be 'masked' or 'routed'"):
        FinetuneRollout(resnet20, mode='fused')


def test_distill_loss_by_hand():
    """T^2 KL(softmax(teacher/T) || softmax(student/T)), batch mean; zero when the logits agree."""
    from timm_blockdrop.train.reinforce import distill_loss
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]
    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(s_row), softmax(t_row)
        kl += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert distill_loss(student, teacher, t).item() == pytest.approx(kl / 2 * t * t, rel=1e-6)
    assert distill_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)
    x = student.clone().requires_grad_(True)
    teacher_g = teacher.clone().requires_grad_(True)
    distill_loss(x, teacher_g, t).backward()
    assert x.grad.abs().sum() > 0 and teacher_g.grad is None  # only the student learns


def test_finetune_rollout_with_a_teacher(cifar_test_slice):
    """With a teacher: teacher_logits are the frozen full ResNet's, exactly (eval mode, untouched), and logits
    those of the ResNet under u, so the recipe's kd_loss is exactly distill_loss of the two."""
    import copy
    base = timm.create_model('cifar_resnet20', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))
    torch.manual_seed(0)
    model = timm_blockdrop.wrap(base)
    teacher = copy.deepcopy(model.base)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    rollout = FinetuneRollout(model, teacher=teacher).train()
    assert rollout.model.base.training and not rollout.teacher.training
    same = copy.deepcopy(model)  # the model as the rollout sees it (its pass moves BatchNorm's running statistics)
    out = rollout(images, torch.arange(16))
    with torch.no_grad():
        want_teacher = teacher(images)
        want = same.forward_with_policy(images, out['keep'], mode='masked')
    assert not teacher.training and torch.equal(out['teacher_logits'], want_teacher)
    assert torch.equal(out['logits'].detach(), want)
    kd = distill_loss(out['logits'], out['teacher_logits'], 3.0)
    assert kd.item() == distill_loss(want, want_teacher, 3.0).item() and kd.item() > 0
    model.zero_grad(set_to_none=True)
    (F.cross_entropy(out['logits'], labels) + 0.5 * kd).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in model.base.parameters() if p.requires_grad)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert 'teacher_logits' not in FinetuneRollout(model)(images, torch.arange(16))


def test_fixed_keep_and_fixed_policy_rollout(cifar_test_slice):
    """FirstK / DistributeK as policies.py; RandomK k blocks per row from the row's seed; a fixed policy is a
    deterministic one (s' = u, u~ = u): its policy-gradient term and advantage are 0 and the policy is unused."""
    from timm_blockdrop.models.policies import distributek, firstk
    from timm_blockdrop.train.reinforce import fixed_keep
    seeds = torch.tensor([3, 5, 7, 3])
    assert torch.equal(fixed_keep('firstk', seeds, 9, 4, (3, 3, 3)), firstk(4, 9, 4))
    assert torch.equal(fixed_keep('distributek', seeds, 9, 4, (3, 3, 3)), distributek(4, 9, 4, (3, 3, 3)))
    r = fixed_keep('randomk', seeds, 9, 4, (3, 3, 3))
    assert r.sum(1).tolist() == [4, 4, 4, 4] and torch.equal(r[0], r[3]) and not torch.equal(r[0], r[1])
    assert torch.equal(fixed_keep('randomk', seeds[1:2], 9, 4, (3, 3, 3))[0], r[1])  # per row, not per batch
    base = timm.create_model('cifar_resnet20', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))
    torch.manual_seed(0)
    model = timm_blockdrop.wrap(base)
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    out = FinetuneRollout(model, fixed_policy='distributek', fixed_blocks=6).train()(images, torch.arange(16))
    assert torch.equal(out['keep'], distributek(16, 9, 6, (3, 3, 3))) and torch.equal(out['keep_greedy'], out['keep'])
    _, _, adv = rewards(out, labels, 5.0)
    pg = policy_gradient_loss(out['probs'], out['keep'], adv, 16)
    assert pg.item() == 0 and not adv.any()
    with torch.no_grad():
        want = F.cross_entropy(model.forward_with_policy(images, out['keep'], mode='masked'), labels)
    ce = F.cross_entropy(out['logits'], labels)
    assert ce.item() == pytest.approx(want.item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    (pg + ce).backward()
    assert all(p.grad is None for p in model.policy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base.parameters())
    with pytest.raises(ValueError):
        FinetuneRollout(model, fixed_policy='firstk', fixed_blocks=10)  # k > K
    ranged = FinetuneRollout(model, fixed_policy='randomk', fixed_blocks=2, fixed_blocks_max=7).train()
    out = ranged(images, torch.arange(16))
    assert torch.equal(out['keep'], fixed_keep('randomk', torch.arange(16), 9, 2, (3, 3, 3), k_max=7))
    assert len(set(out['keep'].sum(1).tolist())) > 2 and out['keep'].sum(1).min() >= 2
    with pytest.raises(ValueError, match='got 10'):
        FinetuneRollout(model, fixed_policy='randomk', fixed_blocks=2, fixed_blocks_max=10)  # k_max > K
