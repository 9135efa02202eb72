"""REINFORCE for BlockDrop (paper Sec. 3.3, Eq. 5-6, Alg. 1): the forward passes of the two stages and the
pieces of their losses, which the recipes compose in their training loops.

Both stages sample u ~ Bernoulli(s') from the alpha-bounded policy s' = alpha s + (1 - alpha)(1 - s), run the
ResNet under u and under the greedy policy u~ (s >= 0.5, the self-critical baseline, no gradient), and weight
-log pi(u|x) by the advantage A = R(u) - R(u~) (``rewards``, from ``reward.py``):

- ``CurriculumRollout`` (stage 1): the ResNet is frozen (eval mode, inference mode) and only the policy learns; at
  epoch t the first blocks are forced on in u and u~ (``curriculum.py``) and only the decided blocks enter
  ``curriculum_loss``. Both ResNet passes run as one routed pass that computes the rows of u and u~ once for as
  long as the two policies agree (``models.routing.paired_logits``).
- ``FinetuneRollout`` (stage 2): policy and ResNet learn together: ``policy_gradient_loss`` + the cross-entropy
  of the ResNet under u (+ ``distill_loss`` from a teacher). The stem is shared by the sampled and greedy passes.

The rollouts are ``nn.Module``s so that DDP (``accelerator.prepare``) wraps them and all-reduces the gradients of
whatever they train. Randomness is per sample: each row comes with an integer seed (see
``data.SampleSeeds``) from which its K uniforms are drawn, so a run gives the same policies whatever the number
of processes, and resuming repeats exactly the samples an uninterrupted run would have drawn.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .curriculum import force_prefix
from ..models.routing import paired_logits
from ..models.policies import bounded, greedy, heuristic_policy, row_uniforms
from .reward import advantage, reward

__all__ = [
    'ENTROPY_FORMS', 'bernoulli_log_prob', 'entropy', 'row_uniforms', 'sample_with', 'curriculum_loss',
    'policy_gradient_loss', 'distill_loss', 'rewards', 'CurriculumRollout', 'FinetuneRollout', 'fixed_keep',
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


def policy_gradient_loss(
        probs: torch.Tensor, keep: torch.Tensor, adv: torch.Tensor, weight: float = 1.0, beta: float = 0.0,
        entropy_form: str = 'reference',
) -> torch.Tensor:
    """Stage-2 policy term (Eq. 5-6): weight * mean_b(-sum_k log pi(u_bk) A_b) - beta * mean_b(sum_k H(s'_bk)).

    The reference code sums the policy-gradient term over the batch; with ``weight`` = the global batch size this
    is exactly that, independently of how the batch is split over processes and accumulation steps (DDP and
    accumulation average per-process means). ``beta`` > 0 adds an entropy bonus (the reference has none here).
    """
    pg = (-bernoulli_log_prob(probs, keep).sum(1) * adv.detach()).mean() * weight
    if beta:
        pg = pg - beta * entropy(probs, entropy_form).sum(1).mean()
    return pg


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(logits / T)), averaged over the batch (Hinton et al.'s distillation).

    Not in the paper: in joint finetuning the ResNet under the sampled policy may learn from the full ResNet's
    logits besides the labels (``distill_weight`` in the finetune config).
    """
    t = float(temperature)
    log_p = F.log_softmax(logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction='batchmean', log_target=True) * t * t


def _sampled_and_greedy(model, images: torch.Tensor, seeds: torch.Tensor, stem: Optional[torch.Tensor] = None):
    """s' = bounded(s) (float32, with gradient), u ~ Bernoulli(s') from the rows' seeds, and u~ = greedy(s).

    ``stem``: the base's stem output, computed already, for a policy that reads it."""
    probs = model.policy_probs(images, stem=stem).float()
    with torch.no_grad():
        keep = sample_with(bounded(probs, model.alpha), row_uniforms(seeds, model.num_blocks))
        keep_greedy = greedy(probs.detach(), model.threshold)
    return bounded(probs, model.alpha), keep, keep_greedy


def rewards(out: Dict[str, torch.Tensor], targets: torch.Tensor, gamma: float, budget=None):
    """(R(u), correct under u, A = R(u) - R(u~)) of a rollout's outputs (Eq. 3 and 6; no gradient).

    With a ``train.budget.BlockBudget`` both rewards pay its price for their blocks: R(u) - lambda c(u).
    """
    with torch.no_grad():
        correct = out['logits'].detach().argmax(1) == targets
        r = reward(out['keep'], correct, gamma)
        r_greedy = reward(out['keep_greedy'], out['logits_greedy'].detach().argmax(1) == targets, gamma)
        if budget is not None:
            r, r_greedy = r - budget.penalty(out['keep']), r_greedy - budget.penalty(out['keep_greedy'])
    return r, correct, advantage(r, r_greedy)


class CurriculumRollout(nn.Module):
    """The curriculum's forward pass (Alg. 1 lines 5-9): the policy samples u and the frozen ResNet runs under u
    and under the greedy u~, with the first ``n_forced`` blocks on in both.

    ``forward(images, seeds, n_forced)`` returns ``probs`` (s', with gradient: the only thing that learns),
    ``keep`` (u), ``keep_greedy`` (u~), ``logits`` and ``logits_greedy`` (no gradient; one routed pass that
    computes a row once for as long as its two policies agree). The recipe turns them into the loss. An
    ``nn.Module`` so that DDP wraps it and all-reduces the policy's gradients.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        model.base.requires_grad_(False)
        model.base.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.base.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def forward(self, images: torch.Tensor, seeds: torch.Tensor, n_forced: int = 0) -> Dict[str, torch.Tensor]:
        probs, keep, keep_greedy = _sampled_and_greedy(self.model, images, seeds)
        keep, keep_greedy = force_prefix(keep, n_forced), force_prefix(keep_greedy, n_forced)
        with torch.inference_mode():
            logits, logits_greedy = paired_logits(self.model, images, keep, keep_greedy)
        # inference-mode tensors cannot be saved for backward: clone them into ordinary ones
        return dict(probs=probs, keep=keep, keep_greedy=keep_greedy, logits=logits.clone(),
                    logits_greedy=logits_greedy.clone())


class FinetuneRollout(nn.Module):
    """Joint finetuning's forward pass (Alg. 1 line 15): u sampled by the policy, the ResNet (training) under u,
    and under the greedy u~ without gradient on the shared stem; a heuristic ``fixed_policy`` (the Table 1 (ft)
    baselines) replaces the policy network.

    ``forward(images, seeds)`` returns ``probs`` (s'; for a fixed policy s' = u, a deterministic policy whose
    policy-gradient term is 0), ``keep``, ``keep_greedy``, ``logits`` (with gradient), ``logits_greedy`` and,
    with a ``teacher``, ``teacher_logits`` (the frozen full ResNet). ``mode`` is how the blocks run under u:
    'masked' (the reference: every block on the whole batch) or 'routed' (each block on the rows that keep it,
    which changes what BatchNorm's batch statistics see).
    """

    def __init__(self, model: nn.Module, mode: str = 'masked', teacher: Optional[nn.Module] = None,
                 fixed_policy: Optional[str] = None, fixed_blocks: Optional[int] = None,
                 fixed_blocks_max: Optional[int] = None):
        super().__init__()
        if mode not in ('masked', 'routed'):
            raise ValueError(f"mode must be 'masked' or 'routed', got {mode!r}")
        if fixed_policy is not None:  # validates the name and k
            heuristic_policy(fixed_policy, 1, model.num_blocks, fixed_blocks, model.stage_sizes, k_max=fixed_blocks_max)
        self.model, self.mode, self.teacher = model, mode, teacher
        self.fixed_policy, self.fixed_blocks, self.fixed_blocks_max = fixed_policy, fixed_blocks, fixed_blocks_max
        model.requires_grad_(True)
        if fixed_policy is not None:
            model.policy.requires_grad_(False)  # unused: the heuristic decides
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def forward(self, images: torch.Tensor, seeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        model = self.model
        h = model.forward_stem(images)  # once: a policy on the stem reads it too
        if self.fixed_policy is None:
            probs, keep, keep_greedy = _sampled_and_greedy(model, images, seeds, stem=h)
        else:
            keep = fixed_keep(self.fixed_policy, seeds, model.num_blocks, self.fixed_blocks,
                              model.stage_sizes, self.fixed_blocks_max).to(images.device)
            probs = keep_greedy = keep
        logits = model.forward_head(model.forward_blocks(h, keep, mode=self.mode))
        with torch.no_grad():
            logits_greedy = logits.detach() if keep_greedy is keep else model.forward_head(
                model.forward_blocks(h.detach(), keep_greedy, mode=self.mode))
            out = dict(probs=probs, keep=keep, keep_greedy=keep_greedy, logits=logits, logits_greedy=logits_greedy)
            if self.teacher is not None:
                out['teacher_logits'] = self.teacher(images)
        return out


def fixed_keep(name: str, seeds: torch.Tensor, num_blocks: int, k: int, stage_sizes: Sequence[int],
               k_max: Optional[int] = None) -> torch.Tensor:
    """(B, K) keep of a heuristic policy (firstk, randomk, distributek) for rows with these sample seeds.

    RandomK draws each row's k blocks (and, with ``k_max``, its k in [k, k_max]) from the row's own uniforms
    (``policies.randomk`` with ``seeds``), so a sample gets the same blocks in any batch, on any number of
    processes and after a resume.
    """
    return heuristic_policy(name, len(seeds), num_blocks, k, stage_sizes, seeds=seeds, k_max=k_max)
