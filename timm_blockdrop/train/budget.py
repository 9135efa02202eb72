"""A block budget the user sets (issue 11; beyond the paper): the reward of Eq. 3 with a dual-ascent block cost.

Under the paper's reward, 1 - (|u|/K)^2 if correct else -gamma, the block count a policy settles at is whatever
the ResNet's accuracy allows: with a frozen ResNet where each dropped block costs a few points, it keeps 11-12 of
ResNet-32's 15. A budget makes the count a target instead. Each row's reward pays a price lambda per unit of cost,

    R_b(u) = R(u) - lambda * c(u),   c(u) = sum_k w_k u_k   (w_k = 1 / K: the fraction of blocks kept),

and lambda follows dual ascent on the constraint E[c(u~)] <= target, measured on the greedy policy u~ that
inference runs: lambda <- max(0, lambda + lr * (mean c(u~) - target)). Below the budget lambda decays to 0 and the
paper's reward is left as it is; above it the price rises until the policy drops blocks. With per-block FLOPs as
weights (``weights=``) the target is a fraction of the blocks' FLOPs instead of a block count.
"""
import math
from typing import Dict, Optional, Sequence

import torch

__all__ = ['BlockBudget', 'block_budget']


class BlockBudget:
    """The price lambda of the block budget and its dual-ascent update (state saved with the run's checkpoints).

    Args:
        target: the budget, in blocks (of ``num_blocks``), or with ``weights`` as a fraction of sum(weights).
        num_blocks: K.
        lr: dual-ascent step size of lambda per optimizer step (in reward units per unit of cost overshoot).
        weights: optional (K,) per-block costs (e.g. FLOPs); None: every block costs 1 / K.
        price: the initial lambda.
    """

    def __init__(self, target: float, num_blocks: int, lr: float = 0.05, weights: Optional[Sequence[float]] = None,
                 price: float = 0.0):
        num_blocks = int(num_blocks)
        if weights is None:
            if not (isinstance(target, (int, float)) and 0 <= target <= num_blocks):
                raise ValueError(f'budget_blocks must be a number of blocks in [0, K = {num_blocks}], got {target!r}')
            self.weights = torch.full((num_blocks,), 1.0 / num_blocks)
            self.target = float(target) / num_blocks
        else:
            w = torch.as_tensor(weights, dtype=torch.float32).flatten()
            if w.numel() != num_blocks or not bool((w >= 0).all()) or float(w.sum()) <= 0:
                raise ValueError(f'budget weights must be {num_blocks} non-negative per-block costs, got {weights!r}')
            if not (isinstance(target, (int, float)) and 0 < target <= 1):
                raise ValueError(f'budget_flops must be a fraction of the blocks\' FLOPs in (0, 1], got {target!r}')
            self.weights = w / w.sum()
            self.target = float(target)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f'budget_lr must be a number > 0, got {lr!r}')
        self.lr = float(lr)
        self.price = float(price)

    def cost(self, keep: torch.Tensor) -> torch.Tensor:
        """c(u) for each row of a (B, K) policy: the fraction of the blocks' cost it runs (float32)."""
        return keep.detach().float() @ self.weights.to(keep.device)

    def penalty(self, keep: torch.Tensor) -> torch.Tensor:
        """lambda * c(u) for each row: what the budget takes off the reward of Eq. 3."""
        return self.price * self.cost(keep)

    def update(self, mean_cost: float) -> float:
        """One dual-ascent step from the greedy policy's mean cost over the (global) batch; returns lambda."""
        self.price = max(0.0, self.price + self.lr * (float(mean_cost) - self.target))
        return self.price

    def step(self, keep_greedy: torch.Tensor, accelerator) -> float:
        """``update`` from this batch's greedy policies, their mean cost averaged over all processes."""
        return self.update(accelerator.reduce(self.cost(keep_greedy).mean(), 'mean').item())

    def state_dict(self) -> Dict[str, float]:
        return {'price': self.price}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.price = float(state['price'])


def block_budget(config, num_blocks: int, accelerator) -> Optional[BlockBudget]:
    """The run's budget (None when ``config.budget_blocks`` is None), registered with Accelerate so that its price
    is saved in the run's checkpoints and resumed with them."""
    if config.budget_blocks is None:
        return None
    budget = BlockBudget(config.budget_blocks, num_blocks, config.budget_lr)
    accelerator.register_for_checkpointing(budget)
    return budget
