"""REINFORCE for BlockDrop (paper Sec. 3.3, Eq. 5-6, Alg. 1): the two training steps and their losses.

Both steps sample u ~ Bernoulli(s') from the alpha-bounded policy s' = alpha s + (1 - alpha)(1 - s), run the
ResNet under u and under the greedy policy u~ (s >= 0.5, the self-critical baseline, no gradient), and weight
-log pi(u|x) by the advantage A = R(u) - R(u~) (``reward.py``):

- ``CurriculumStep`` (stage 1): the ResNet is frozen (eval mode, inference mode) and only the policy learns; at
  epoch t the first blocks are forced on in u and u~ (``curriculum.py``) and only the decided blocks enter the
  loss. Both ResNet passes run as one routed pass that computes the rows of u and u~ once for as long as the two
  policies agree (``models.routing.paired_logits``), so the forced prefix is always computed once.
- ``FinetuneStep`` (stage 2): policy and ResNet learn together; the loss adds the cross-entropy of the ResNet
  under the sampled policy. The stem is shared by the sampled and the greedy pass.

The steps are ``nn.Module``s so that DDP (``accelerator.prepare``) wraps them and all-reduces the gradients of
whatever they train. Randomness is per sample: each row comes with an integer seed (see
``data.SampleSeeds``) from which its K uniforms are drawn, so a run gives the same policies whatever the number
of processes, and resuming repeats exactly the samples an uninterrupted run would have drawn.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .curriculum import force_prefix
from ..models.routing import paired_logits
from ..models.policies import bounded, greedy, heuristic_policy, row_uniforms
from .reward import advantage, check_gamma, reward

__all__ = [
    'ENTROPY_FORMS', 'bernoulli_log_prob', 'entropy', 'row_uniforms', 'sample_with', 'curriculum_loss',
    'finetune_loss', 'distill_loss', 'paired_logits', 'CurriculumStep', 'FinetuneStep', 'fixed_keep',
    'FixedPolicyStep',
]

ENTROPY_FORMS = ('reference', 'bernoulli')
_EPS = 1e-15  # the reference code's clamp


def bernoulli_log_prob(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log[s_k^u_k (1 - s_k)^(1 - u_k)] for each block (the summand of Eq. 5), shape (B, K)."""
    p = torch.where(keep.to(probs.dtype) > 0.5, probs, 1.0 - probs)
    return p.clamp_min(_EPS).log()


def entropy(probs: torch.Tensor, form: str = 'reference') -> torch.Tensor:
    """Per-block entropy bonus of the (bounded) probabilities, shape (B, K).

    ``'reference'``: -s log s, what the reference implementation (Tushar-N/blockdrop, cl_training.py) adds with
    beta = 0.1; it omits the -(1 - s) log(1 - s) half of the Bernoulli entropy, so it peaks at s = 1/e rather
    than 0.5 (a slight push towards dropping). ``'bernoulli'``: the full entropy -s log s - (1 - s) log(1 - s).
    """
    if form not in ENTROPY_FORMS:
        raise ValueError(f"entropy form must be one of {', '.join(ENTROPY_FORMS)}, got {form!r}")
    p = probs.clamp(_EPS, 1.0 - _EPS)
    h = -p * p.log()
    if form == 'bernoulli':
        h = h - (1.0 - p) * (1.0 - p).log()
    return h


def sample_with(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """u ~ Bernoulli(probs) from given uniforms: u_k = 1 where uniform_k < s'_k (Alg. 1 line 9)."""
    return (uniforms.to(probs.device) < probs.detach()).to(probs.dtype)


def curriculum_loss(
        probs: torch.Tensor, keep: torch.Tensor, adv: torch.Tensor, n_forced: int = 0, beta: float = 0.1,
        entropy_form: str = 'reference',
) -> torch.Tensor:
    """Stage-1 loss: (sum_{b, k >= n_forced} -log pi(u_bk) A_b  -  beta sum_{b, k} H(s'_bk)) / B.

    ``probs`` are the bounded probabilities s' that ``keep`` (u) was sampled from, ``adv`` the (B,) advantages.
    As in the reference code, the policy-gradient term covers only the blocks the policy decides at this stage of
    the curriculum, the entropy bonus all K blocks, and the sum is divided by the batch size.
    """
    log_prob = bernoulli_log_prob(probs, keep)
    pg = -(log_prob[:, n_forced:] * adv.detach()[:, None]).sum()
    bonus = entropy(probs, entropy_form).sum()
    return (pg - beta * bonus) / probs.shape[0]


def finetune_loss(
        probs: torch.Tensor, keep: torch.Tensor, adv: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
        pg_weight: float = 1.0, beta: float = 0.0, entropy_form: str = 'reference',
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage-2 loss: pg_weight * mean_b(-sum_k log pi(u_bk) A_b) + cross_entropy(logits under u, targets).

    The reference code sums the policy-gradient term over the batch and averages the cross-entropy; with
    ``pg_weight`` = the global batch size this is exactly that, independently of how the batch is split over
    processes and accumulation steps (DDP and accumulation average per-process means). ``beta`` > 0 adds an
    entropy bonus (the reference has none in this stage). Returns (loss, policy-gradient term, cross-entropy).
    """
    pg = (-bernoulli_log_prob(probs, keep).sum(1) * adv.detach()).mean() * pg_weight
    ce = F.cross_entropy(logits.float(), targets)
    loss = pg + ce
    if beta:
        loss = loss - beta * entropy(probs, entropy_form).sum(1).mean()
    return loss, pg, ce


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(logits / T)), averaged over the batch (Hinton et al.'s distillation).

    Not in the paper: in joint finetuning the ResNet under the sampled policy may learn from the full ResNet's
    logits besides the labels (``distill_weight`` in the finetune config).
    """
    t = float(temperature)
    log_p = F.log_softmax(logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction='batchmean', log_target=True) * t * t


def _sampled_and_greedy(model, images: torch.Tensor, seeds: torch.Tensor):
    """s (float32), s' = bounded(s), u ~ Bernoulli(s') from the rows' seeds, and u~ = greedy(s)."""
    probs = model.policy_probs(images).float()
    probs_b = bounded(probs, model.alpha)
    with torch.no_grad():
        keep = sample_with(probs_b, row_uniforms(seeds, model.num_blocks))
        keep_greedy = greedy(probs.detach(), model.threshold)
    return probs, probs_b, keep, keep_greedy


class CurriculumStep(nn.Module):
    """One curriculum-learning step (Alg. 1 lines 4-12): the loss of the policy on a batch, ResNet frozen.

    ``forward(images, targets, seeds, n_forced)`` returns a dict: ``loss`` (to back-propagate), and per row
    ``keep`` (u), ``correct`` and ``reward`` (R(u)), ``greedy_reward`` (R(u~)).
    """

    def __init__(self, model: nn.Module, gamma: float, beta: float = 0.1, entropy_form: str = 'reference'):
        super().__init__()
        if entropy_form not in ENTROPY_FORMS:
            raise ValueError(f"entropy form must be one of {', '.join(ENTROPY_FORMS)}, got {entropy_form!r}")
        self.model = model
        self.gamma = check_gamma(gamma)
        self.beta = float(beta)
        self.entropy_form = entropy_form
        model.base.requires_grad_(False)
        model.base.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.base.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor,
                n_forced: int = 0) -> Dict[str, torch.Tensor]:
        model = self.model
        probs, probs_b, keep, keep_greedy = _sampled_and_greedy(model, images, seeds)
        keep = force_prefix(keep, n_forced)
        keep_greedy = force_prefix(keep_greedy, n_forced)
        with torch.inference_mode():
            logits, logits_greedy = paired_logits(model, images, keep, keep_greedy)
            correct = logits.argmax(1) == targets
            r = reward(keep, correct, self.gamma)
            r_greedy = reward(keep_greedy, logits_greedy.argmax(1) == targets, self.gamma)
            adv = advantage(r, r_greedy)
        # inference-mode tensors cannot be saved for backward: clone them into ordinary ones
        adv, correct, r, r_greedy = adv.clone(), correct.clone(), r.clone(), r_greedy.clone()
        loss = curriculum_loss(probs_b, keep, adv, n_forced, self.beta, self.entropy_form)
        return dict(loss=loss, keep=keep, correct=correct, reward=r, greedy_reward=r_greedy)


class _FinetuneStepBase(nn.Module):
    """What every finetuning step shares: the model (all of it trainable), the reward's gamma, how the sampled
    pass runs the blocks (``mode``) and, with ``distill_weight`` > 0, a frozen teacher whose logits it distils."""

    def __init__(self, model: nn.Module, gamma: float, mode: str, teacher: Optional[nn.Module],
                 distill_weight: float, distill_temperature: float):
        super().__init__()
        if mode not in ('masked', 'routed'):
            raise ValueError(f"mode must be 'masked' or 'routed', got {mode!r}")
        self.model = model
        self.gamma = check_gamma(gamma)
        self.mode = mode
        model.requires_grad_(True)
        self.distill_weight = float(distill_weight)
        self.distill_temperature = float(distill_temperature)
        if self.distill_weight and teacher is None:
            raise ValueError('distill_weight > 0 needs a teacher (the full ResNet)')
        self.teacher = teacher if self.distill_weight else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def _distil(self, out: Dict[str, torch.Tensor], logits: torch.Tensor, images: torch.Tensor):
        """Add w * kd to out['loss'] (and kd_loss to out) where there is a teacher."""
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            kd = distill_loss(logits, teacher_logits, self.distill_temperature)
            out['loss'] = out['loss'] + self.distill_weight * kd
            out['kd_loss'] = kd.detach()
        return out


class FinetuneStep(_FinetuneStepBase):
    """One joint-finetuning step (Alg. 1 line 15): policy-gradient loss + cross-entropy under the sampled policy.

    ``pg_weight`` scales the per-row mean of the policy-gradient term (the global batch size reproduces the
    reference's sum over the batch); ``mode`` is how the sampled pass runs the blocks ('masked', as the reference:
    every block on the whole batch; or 'routed': each block only on the rows that keep it, which changes what
    BatchNorm's batch statistics see). The greedy pass runs under no_grad on the shared stem output.
    """

    def __init__(self, model: nn.Module, gamma: float, pg_weight: float = 1.0, beta: float = 0.0,
                 entropy_form: str = 'reference', mode: str = 'masked', teacher: Optional[nn.Module] = None,
                 distill_weight: float = 0.0, distill_temperature: float = 4.0):
        super().__init__(model, gamma, mode, teacher, distill_weight, distill_temperature)
        if entropy_form not in ENTROPY_FORMS:
            raise ValueError(f"entropy form must be one of {', '.join(ENTROPY_FORMS)}, got {entropy_form!r}")
        self.pg_weight = float(pg_weight)
        self.beta = float(beta)
        self.entropy_form = entropy_form

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        model = self.model
        probs, probs_b, keep, keep_greedy = _sampled_and_greedy(model, images, seeds)
        h = model.forward_stem(images)
        logits = model.forward_head(model.forward_blocks(h, keep, mode=self.mode))
        with torch.no_grad():
            logits_greedy = model.forward_head(model.forward_blocks(h.detach(), keep_greedy, mode=self.mode))
            correct = logits.detach().argmax(1) == targets
            r = reward(keep, correct, self.gamma)
            r_greedy = reward(keep_greedy, logits_greedy.argmax(1) == targets, self.gamma)
            adv = advantage(r, r_greedy)
        loss, pg, ce = finetune_loss(probs_b, keep, adv, logits, targets, self.pg_weight, self.beta,
                                     self.entropy_form)
        out = dict(loss=loss, pg_loss=pg.detach(), ce_loss=ce.detach(), keep=keep, correct=correct, reward=r,
                   greedy_reward=r_greedy)
        return self._distil(out, logits, images)


def fixed_keep(name: str, seeds: torch.Tensor, num_blocks: int, k: int, stage_sizes: Sequence[int]) -> torch.Tensor:
    """(B, K) keep of a heuristic policy (firstk, randomk, distributek) for rows with these sample seeds.

    RandomK draws each row's k blocks from the row's own uniforms (``policies.randomk`` with ``seeds``), so a sample gets the same
    blocks in any batch, on any number of processes and after a resume.
    """
    return heuristic_policy(name, len(seeds), num_blocks, k, stage_sizes, seeds=seeds)


class FixedPolicyStep(_FinetuneStepBase):
    """Finetuning the ResNet under a heuristic policy: the FirstK / RandomK / DistributeK (ft) baselines of Table 1.

    Cross-entropy of the ResNet run under ``fixed_keep`` (the policy network is frozen and unused), plus the same
    distillation term as ``FinetuneStep`` when given a teacher, so a baseline trains exactly as BlockDrop does;
    ``reward`` (Eq. 3 with ``gamma``) is reported for comparison only. Same outputs as ``FinetuneStep`` (pg_loss 0).
    """

    def __init__(self, model: nn.Module, policy: str, blocks: int, gamma: float = 5.0, mode: str = 'masked',
                 teacher: Optional[nn.Module] = None, distill_weight: float = 0.0, distill_temperature: float = 4.0):
        heuristic_policy(policy, 1, model.num_blocks, blocks, model.stage_sizes)  # validates name and k
        super().__init__(model, gamma, mode, teacher, distill_weight, distill_temperature)
        self.policy_name = policy
        self.blocks = int(blocks)
        model.policy.requires_grad_(False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        model = self.model
        keep = fixed_keep(self.policy_name, seeds, model.num_blocks, self.blocks, model.stage_sizes).to(images.device)
        logits = model.forward_head(model.forward_blocks(model.forward_stem(images), keep, mode=self.mode))
        ce = F.cross_entropy(logits.float(), targets)
        with torch.no_grad():
            correct = logits.argmax(1) == targets
            r = reward(keep, correct, self.gamma)
        out = dict(loss=ce, pg_loss=torch.zeros((), device=ce.device), ce_loss=ce.detach(), keep=keep,
                   correct=correct, reward=r, greedy_reward=r)
        return self._distil(out, logits, images)
