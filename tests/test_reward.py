"""Reward (Eq. 3), self-critical advantage (Eq. 6), bounded probabilities and the REINFORCE losses and steps,
against values computed by hand."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_blockdrop
from timm_blockdrop.models.policies import bounded, check_alpha
from timm_blockdrop.train.reinforce import (CurriculumStep, FinetuneStep, bernoulli_log_prob, curriculum_loss, entropy,
                                      finetune_loss, paired_logits, row_uniforms, sample_with)
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


def test_finetune_loss_by_hand():
    """pg_weight = batch size gives the reference's sum over the batch; plus the mean cross-entropy."""
    s = torch.tensor([[0.8, 0.3], [0.5, 0.2]])
    u = torch.tensor([[1., 0.], [0., 1.]])
    adv = torch.tensor([1.5, -0.5])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    pg = -(math.log(0.8) + math.log(0.7)) * 1.5 - (math.log(0.5) + math.log(0.2)) * -0.5
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2
    loss, pg_t, ce_t = finetune_loss(s, u, adv, logits, targets, pg_weight=2)
    assert pg_t.item() == pytest.approx(pg, rel=1e-6) and ce_t.item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(pg + ce, rel=1e-6)
    assert finetune_loss(s, u, adv, logits, targets, pg_weight=1)[1].item() == pytest.approx(pg / 2, rel=1e-6)


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


def test_curriculum_step(resnet20, cifar_test_slice):
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    step = CurriculumStep(resnet20, gamma=1.0, beta=0.1).train()
    assert not step.model.base.training and step.model.policy.training
    seeds = torch.arange(16)
    out = step(images, labels, seeds, n_forced=6)
    assert out['keep'][:, :6].eq(1).all()  # the forced prefix
    with torch.inference_mode():  # the reported rewards are those of the ResNet under the sampled policy
        preds = resnet20.forward_with_policy(images, out['keep']).argmax(1)
    assert torch.equal(out['correct'], preds == labels)
    assert torch.allclose(out['reward'], reward(out['keep'], preds == labels, 1.0))
    resnet20.zero_grad(set_to_none=True)
    out['loss'].backward()
    assert all(p.grad is not None for p in resnet20.policy.parameters())
    assert all(p.grad is None and not p.requires_grad for p in resnet20.base.parameters())
    again = step(images, labels, seeds, n_forced=6)
    assert torch.equal(again['keep'], out['keep'])  # same seeds, same policy: the randomness is per sample


def test_finetune_step(resnet20, cifar_test_slice):
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    step = FinetuneStep(resnet20, gamma=5.0, pg_weight=16).train()
    assert step.model.base.training
    resnet20.zero_grad(set_to_none=True)
    out = step(images, labels, torch.arange(16))
    out['loss'].backward()
    assert out['loss'].item() == pytest.approx(out['pg_loss'].item() + out['ce_loss'].item(), rel=1e-5)
    allowed = torch.tensor([-5.0] + [1 - (k / 9) ** 2 for k in range(10)])
    assert ((out['reward'][:, None] - allowed).abs().min(1).values < 1e-6).all()
    assert all(p.grad is not None for p in resnet20.policy.parameters())
    assert all(p.grad is not None for p in resnet20.base.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match='gamma'):
        FinetuneStep(resnet20, gamma=-5)


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


def test_finetune_step_with_distillation(cifar_test_slice):
    """distill_weight > 0: loss = pg + ce + w kd against the frozen teacher, which stays in eval mode, untouched."""
    import copy
    from timm_blockdrop.train.reinforce import distill_loss
    base = timm.create_model('cifar_resnet20', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))
    torch.manual_seed(0)
    model = timm_blockdrop.wrap(base)
    teacher = copy.deepcopy(model.base)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, labels = cifar_test_slice[0][:16], cifar_test_slice[1][:16]
    step = FinetuneStep(model, gamma=5.0, pg_weight=16, teacher=teacher, distill_weight=0.5,
                        distill_temperature=3.0).train()
    assert step.model.base.training and not step.teacher.training
    out = step(images, labels, torch.arange(16))
    assert out['loss'].item() == pytest.approx(
        out['pg_loss'].item() + out['ce_loss'].item() + 0.5 * out['kd_loss'].item(), rel=1e-5)
    assert out['kd_loss'].item() > 0
    with torch.no_grad():
        want = teacher(images)
    assert not teacher.training  # the step ran the teacher in eval mode (running BatchNorm statistics)
    model.zero_grad(set_to_none=True)
    out['loss'].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in model.base.parameters() if p.requires_grad)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # kd_loss is the distillation of the sampled pass's logits against these teacher logits
    kd_again = distill_loss(model.forward_with_policy(images, out['keep'], mode='masked'), want, 3.0)
    assert kd_again.item() == pytest.approx(out['kd_loss'].item(), rel=0.2)
    # no teacher: no kd term; a weight without teacher is refused
    assert 'kd_loss' not in FinetuneStep(model, gamma=5.0, pg_weight=16)(images, labels, torch.arange(16))
    with pytest.raises(ValueError, match='teacher'):
        FinetuneStep(model, gamma=5.0, distill_weight=1.0)


def test_fixed_keep_and_fixed_policy_step(cifar_test_slice):
    """FirstK / DistributeK as policies.py; RandomK k blocks per row from the row's seed; the step is plain CE."""
    from timm_blockdrop.models.policies import distributek, firstk
    from timm_blockdrop.train.reinforce import FixedPolicyStep, fixed_keep
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
    step = FixedPolicyStep(model, 'distributek', 6, gamma=5.0).train()
    out = step(images, labels, torch.arange(16))
    assert torch.equal(out['keep'], distributek(16, 9, 6, (3, 3, 3)))
    with torch.no_grad():
        want = F.cross_entropy(model.forward_with_policy(images, out['keep'], mode='masked'), labels)
    assert out['loss'].item() == pytest.approx(want.item(), rel=1e-5) and out['pg_loss'].item() == 0
    model.zero_grad(set_to_none=True)
    out['loss'].backward()
    assert all(p.grad is None for p in model.policy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base.parameters())
    with pytest.raises(ValueError):
        FixedPolicyStep(model, 'firstk', 10)  # k > K
    # with a teacher, the baseline distils exactly as FinetuneStep does: loss = ce + w kd
    import copy
    from timm_blockdrop.train.reinforce import distill_loss
    teacher = copy.deepcopy(model.base)
    step = FixedPolicyStep(model, 'distributek', 6, teacher=teacher, distill_weight=0.5, distill_temperature=3.0)
    out = step.train()(images, labels, torch.arange(16))
    assert not teacher.training and out['kd_loss'].item() > 0
    assert out['loss'].item() == pytest.approx(out['ce_loss'].item() + 0.5 * out['kd_loss'].item(), rel=1e-5)
    with torch.no_grad():
        kd = distill_loss(model.forward_with_policy(images, out['keep'], mode='masked'), teacher(images), 3.0)
    assert kd.item() == pytest.approx(out['kd_loss'].item(), rel=1e-4)
    with pytest.raises(ValueError, match='teacher'):
        FixedPolicyStep(model, 'firstk', 4, distill_weight=1.0)
