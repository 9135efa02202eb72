"""Keep/drop policies u in {0,1}^K (paper Sec. 3.2-3.3 and the heuristic baselines of Sec. 4.2).

Every function returns a (B, K) tensor; ``keep[:, k] == 1`` runs block k, 0 drops it.
"""
from typing import Callable, Dict, Optional, Sequence, Union

import torch

__all__ = [
    'check_threshold', 'check_alpha', 'greedy', 'bounded', 'sample', 'straight_through',
    'row_uniforms', 'full', 'firstk', 'randomk', 'distributek', 'HEURISTICS', 'heuristic_policy',
]


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f'threshold must lie in [0, 1], got {threshold}')
    return threshold


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.5 < alpha <= 1.0:
        raise ValueError(f'alpha must lie in (0.5, 1], got {alpha}')
    return alpha


def greedy(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The maximally probable policy (Sec. 3.3): keep block k where s_k >= threshold (0.5 in the paper)."""
    return (probs >= check_threshold(threshold)).to(probs.dtype)


def bounded(probs: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """s' = alpha * s + (1 - alpha) * (1 - s), so that 1 - alpha <= s' <= alpha (Sec. 3.3, exploration)."""
    alpha = check_alpha(alpha)
    return alpha * probs + (1.0 - alpha) * (1.0 - probs)


def sample(probs: torch.Tensor, alpha: float = 0.8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """u ~ Bernoulli(s') with the alpha-bounded probabilities (Sec. 3.3, Alg. 1 lines 5 and 9)."""
    return torch.bernoulli(bounded(probs.detach(), alpha), generator=generator)


def straight_through(probs: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """A sampled policy whose value is u but whose gradient is that of s (straight-through estimator).

    Used by ``BlockDropResNet.forward`` in train mode so that every parameter, the policy's included,
    gets a gradient from ``forward()`` (timm's contract). REINFORCE training uses ``policy_probs`` instead.
    """
    u = sample(probs, alpha)
    return u + probs - probs.detach()


def row_uniforms(seeds: Union[torch.Tensor, Sequence[int]], num_blocks: int) -> torch.Tensor:
    """(B, K) uniforms on CPU, row i drawn from a generator seeded with ``seeds[i]``.

    Per-sample randomness: a sample gets the same row in any batch, on any number of processes, after a resume.
    """
    seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    gen = torch.Generator()
    out = torch.empty(len(seeds), num_blocks)
    for i, s in enumerate(seeds):
        gen.manual_seed(int(s))
        out[i] = torch.rand(num_blocks, generator=gen)
    return out


# ---- heuristic baselines (Sec. 4.2): no policy network, the same k blocks for every image ----

def _check_k(k: int, num_blocks: int) -> int:
    if k is None:
        raise ValueError('this policy needs a number of blocks k (--blocks)')
    if not 0 <= int(k) <= num_blocks:
        raise ValueError(f'k must lie in [0, K] = [0, {num_blocks}], got {k}')
    return int(k)


def full(batch: int, num_blocks: int, k: Optional[int] = None, **_) -> torch.Tensor:
    """Every block kept: the plain ResNet."""
    return torch.ones(batch, num_blocks)


def firstk(batch: int, num_blocks: int, k: int, **_) -> torch.Tensor:
    """FirstK: keep the first k blocks."""
    k = _check_k(k, num_blocks)
    keep = torch.zeros(batch, num_blocks)
    keep[:, :k] = 1
    return keep


def randomk(
        batch: int, num_blocks: int, k: int, generator: Optional[torch.Generator] = None,
        seeds: Optional[Union[torch.Tensor, Sequence[int]]] = None, k_max: Optional[int] = None, **_,
) -> torch.Tensor:
    """RandomK: keep k blocks chosen uniformly at random, independently for each image.

    The draw is from ``generator`` for the whole batch, or, given one ``seeds`` entry per row, from each row's
    own ``row_uniforms`` (training: the same blocks for a sample whatever the batching). With ``k_max`` each
    row first draws its own k uniformly from [k, k_max] (a base robust at several depths; not in the paper).
    """
    k = _check_k(k, num_blocks)
    if k_max is not None:
        k_max = _check_k(k_max, num_blocks)
        if k_max < k:
            raise ValueError(f'the largest k ({k_max}) must not be below the smallest ({k})')
    extra = 0 if k_max is None else 1  # one more uniform per row draws its k
    if seeds is not None:
        if len(seeds) != batch:
            raise ValueError(f'randomk needs one seed per row: {batch} rows, {len(seeds)} seeds')
        uniforms = row_uniforms(seeds, num_blocks + extra)
    else:
        uniforms = torch.rand(batch, num_blocks + extra, generator=generator)
    order = uniforms[:, :num_blocks].argsort(dim=1)
    if k_max is None:
        ks = torch.full((batch, 1), k)
    else:
        ks = k + (uniforms[:, num_blocks:] * (k_max - k + 1)).long().clamp(max=k_max - k)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_blocks).expand(batch, -1).contiguous())
    return (rank < ks).float()


def distributek(batch: int, num_blocks: int, k: int, stage_sizes: Sequence[int] = (), **_) -> torch.Tensor:
    """DistributeK: spread k blocks evenly over the segments, keeping the first blocks of each segment.

    Segments that are too short to take their share (e.g. ResNet-101's 3-block segments) pass the rest on to
    the others; leftover blocks go to the earliest segments first.
    """
    k = _check_k(k, num_blocks)
    if sum(stage_sizes) != num_blocks:
        raise ValueError(f'stage_sizes {tuple(stage_sizes)} do not add up to K = {num_blocks}')
    share = [0] * len(stage_sizes)
    left = k
    while left > 0:
        open_stages = [i for i, n in enumerate(stage_sizes) if share[i] < n]
        per, extra = divmod(left, len(open_stages))
        for rank, i in enumerate(open_stages):
            give = min(per + (1 if rank < extra else 0), stage_sizes[i] - share[i])
            share[i] += give
            left -= give
    keep = torch.zeros(batch, num_blocks)
    start = 0
    for n, s in zip(stage_sizes, share):
        keep[:, start:start + s] = 1
        start += n
    return keep


HEURISTICS: Dict[str, Callable[..., torch.Tensor]] = {
    'full': full, 'firstk': firstk, 'randomk': randomk, 'distributek': distributek,
}


def heuristic_policy(
        name: str,
        batch: int,
        num_blocks: int,
        k: Optional[int] = None,
        stage_sizes: Sequence[int] = (),
        generator: Optional[torch.Generator] = None,
        seeds: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        k_max: Optional[int] = None,
) -> torch.Tensor:
    """The (batch, K) keep tensor of a heuristic policy by name: full, firstk, randomk or distributek.

    ``seeds`` (one per row) make RandomK per sample (``randomk``); the other policies do not draw. ``k_max``
    (RandomK only) draws each row's k from [k, k_max].
    """
    if name not in HEURISTICS:
        raise ValueError(f"unknown policy '{name}': choose one of learned, {', '.join(HEURISTICS)}")
    if k_max is not None and name != 'randomk':
        raise ValueError(f"a range of k (up to {k_max}) is for policy 'randomk', not '{name}'")
    return HEURISTICS[name](batch, num_blocks, k=k, stage_sizes=stage_sizes, generator=generator, seeds=seeds,
                            k_max=k_max)
