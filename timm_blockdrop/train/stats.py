"""What a run reports about its policies: running statistics of an epoch (accuracy, reward, blocks, unique
policies) that survive a checkpoint and merge over processes, and the training throughput."""
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from accelerate.utils import gather_object

__all__ = ['PolicyStats', 'Throughput']


@dataclass
class PolicyStats:
    """Running statistics of an epoch's policies: accuracy, reward, blocks used (mean, std), unique policies.

    JSON-serialisable (``state_dict``) so a checkpoint can carry a half-done epoch; ``reduced`` merges the
    statistics of all processes. At most ``max_policies`` distinct policies are remembered.
    """

    n: int = 0
    correct: float = 0.0
    reward: float = 0.0
    blocks: float = 0.0
    blocks_sq: float = 0.0
    loss: float = 0.0
    loss_batches: int = 0
    policies: List[str] = field(default_factory=list)
    max_policies: int = 100_000

    def __post_init__(self):
        self._seen = set(self.policies)

    def update(self, keep: torch.Tensor, correct: torch.Tensor, reward: torch.Tensor,
               loss: Optional[torch.Tensor] = None) -> None:
        keep = keep.detach().to('cpu') != 0
        counts = keep.sum(1).double()
        self.n += keep.shape[0]
        self.correct += float(correct.detach().to('cpu').double().sum())
        self.reward += float(reward.detach().to('cpu').double().sum())
        self.blocks += float(counts.sum())
        self.blocks_sq += float((counts ** 2).sum())
        if loss is not None:
            self.loss += float(loss.detach().to('cpu'))
            self.loss_batches += 1
        for row in np.packbits(keep.numpy(), axis=1):
            self._add(row.tobytes().hex())

    def _add(self, policy: str) -> None:
        if policy not in self._seen and len(self._seen) < self.max_policies:
            self._seen.add(policy)
            self.policies.append(policy)

    def merge(self, other: 'PolicyStats') -> 'PolicyStats':
        for key in ('n', 'correct', 'reward', 'blocks', 'blocks_sq', 'loss', 'loss_batches'):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for p in other.policies:
            self._add(p)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> 'PolicyStats':
        return cls(**state)

    def reduced(self, accelerator) -> 'PolicyStats':
        """The statistics of all processes together (a collective: every process must call it)."""
        states = gather_object([self.state_dict()]) if accelerator.num_processes > 1 else [self.state_dict()]
        total = PolicyStats(max_policies=self.max_policies)
        for state in states:
            total.merge(PolicyStats.from_state_dict(state))
        return total

    def summary(self, prefix: str) -> Dict[str, Any]:
        n = max(self.n, 1)
        mean = self.blocks / n
        out = {
            f'{prefix}_images': self.n,
            f'{prefix}_accuracy': 100.0 * self.correct / n,
            f'{prefix}_reward': self.reward / n,
            f'{prefix}_blocks_mean': mean,
            f'{prefix}_blocks_std': math.sqrt(max(0.0, self.blocks_sq / n - mean ** 2)),
            f'{prefix}_unique_policies': len(self.policies),
        }
        if len(self.policies) >= self.max_policies:
            out[f'{prefix}_unique_policies_capped'] = True
        if self.loss_batches:
            out[f'{prefix}_loss'] = self.loss / self.loss_batches
        return out


class Throughput:
    """Images per second of the training loop, all processes together, since ``start``."""

    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self.start()

    def start(self) -> None:
        self.images, self._start = 0, time.perf_counter()

    def add(self, batch_size: int) -> None:
        self.images += batch_size * self.num_processes

    def images_per_s(self) -> float:
        seconds = time.perf_counter() - self._start
        return self.images / seconds if seconds > 0 else 0.0
