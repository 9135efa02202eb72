"""What a training run needs around its loop: model and data set-up, LR schedule, statistics, checkpoints, logs.

The recipes (``recipes/curriculum.py``, ``recipes/finetune.py``) read top to bottom; everything here is what
they share. An output folder holds:

```
config.yaml        the resolved config
metrics.jsonl      one line per epoch (train / val accuracy, reward, blocks, unique policies, images/s, lr)
steps.jsonl        one line every log_every_steps optimizer steps (loss, reward, lr)
checkpoints/       step_<global step>_epoch_<epoch>_<batch>/: accelerate's save_state (model.safetensors,
                   optimizer.bin, scheduler.bin, random_states_<rank>.pkl), stats_<rank>.json (the epoch's
                   running statistics) and progress.json (epoch, batch, step, metrics history), written last
model/             the final model in timm's save_for_hf layout (model.safetensors + config.json)
```
Everything is loaded back with ``weights_only=True`` (accelerate's ``load_state``) or as JSON.
"""
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import timm
import torch

from ..data import (check_labels, eval_transform, find_columns, load_split, train_transform, with_index,
                    with_seeded_transform, with_transform)
from ..models.blockdrop import BlockDropResNet, wrap
from ..models.checkpoints import CheckpointError
from ..models.loading import load_model
from .config import VAL_SPLIT, TrainConfig

__all__ = [
    'build_model', 'init_model_folder', 'finetune_param_groups', 'init_policy_keep',
    'init_policy_from_base', 'held_out_rows', 'train_split', 'eval_split', 'lr_scheduler', 'PolicyStats', 'Progress',
    'checkpoint_dirs', 'find_checkpoint', 'check_fresh', 'save_checkpoint', 'load_checkpoint', 'JsonLines',
    'save_model', 'synced_batches', 'Throughput',
]

CHECKPOINTS = 'checkpoints'
PROGRESS = 'progress.json'
MODEL_DIR = 'model'


# ---- model ----

def init_model_folder(init_from: str) -> Path:
    """The save_for_hf folder of ``--init-from``: a curriculum output folder (its model/) or the folder itself."""
    path = Path(init_from)
    if not path.exists():
        raise FileNotFoundError(f'--init-from {init_from}: no such folder')
    if (path / MODEL_DIR / 'config.json').is_file():
        return path / MODEL_DIR
    if (path / 'config.json').is_file():
        return path
    raise FileNotFoundError(f'--init-from {init_from}: neither a model folder (config.json + model.safetensors) nor '
                            f'a curriculum output folder with {MODEL_DIR}/ (has the curriculum run finished?)')


def build_model(config: TrainConfig):
    """The BlockDrop model a run starts from: ``init_from`` (finetune), else the base ResNet wrapped fresh."""
    if config.init_from:
        model = load_model(checkpoint=str(init_model_folder(config.init_from)))
        if not isinstance(model, BlockDropResNet):
            raise CheckpointError(f'--init-from {config.init_from} holds a plain ResNet, not a BlockDrop model')
        base_arch = model._model_args['base_model']
        if base_arch != config.model.split('.')[0]:  # (config.model may carry a pretrained tag)
            raise CheckpointError(f"--init-from {config.init_from} is BlockDrop on '{base_arch}', but the config's "
                                  f"model is '{config.model}'")
        model.threshold = config.threshold
        model.alpha = config.alpha
        model._model_args['alpha'] = config.alpha
        return model
    if not timm.is_model(config.model):
        raise ValueError(f"unknown model '{config.model}': not a registered timm model")
    overlay = dict(file=config.pretrained_file) if config.pretrained_file else None
    base = timm.create_model(config.model, pretrained=True, pretrained_cfg_overlay=overlay, **config.model_kwargs)
    return wrap(base, policy_model=config.policy_model, threshold=config.threshold, alpha=config.alpha)


def init_policy_keep(model, keep: float) -> None:
    """Start the policy network near keep probability ``keep`` for every block: classifier bias = logit(keep).

    Not in the paper (whose fresh policy keeps each block with probability about 0.5): a policy that starts near
    the full ResNet ("keep everything", the one known good policy) drops blocks only as the reward asks it to.
    """
    head = model.policy.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.bias is None:
        raise ValueError(f'policy_init_keep needs a policy network whose classifier is a Linear layer with bias, '
                         f'got {type(head).__name__}')
    with torch.no_grad():
        head.bias.fill_(math.log(keep / (1.0 - keep)))


def init_policy_from_base(model) -> List[str]:
    """Copy the base ResNet's tensors into the policy network wherever name and shape agree; the names copied.

    Not in the paper (a fresh policy network): for a CIFAR ResNet-8 policy on a CIFAR ResNet base this is the stem
    and the first block of each stage (the classifier differs in shape and stays fresh), so the policy starts
    with features that already tell the classes apart.
    """
    base = model.base.state_dict()
    state = model.policy.state_dict()
    copied = [k for k, v in state.items() if k in base and base[k].shape == v.shape]
    if not copied:
        raise ValueError('policy_init_from_base: the policy network shares no tensor name and shape with the base')
    state.update({k: base[k].clone() for k in copied})
    model.policy.load_state_dict(state)
    return copied


def finetune_param_groups(model, config: TrainConfig) -> List[Dict[str, Any]]:
    """Adam parameter groups of joint finetuning: the ResNet at ``lr``, the policy network at ``policy_lr``.

    ``policy_lr`` None: one learning rate for both (the reference). The schedule scales both groups alike.
    """
    policy = list(model.policy.parameters())
    ids = {id(p) for p in policy}
    rest = [p for p in model.parameters() if id(p) not in ids]
    policy_lr = config.lr if config.policy_lr is None else config.policy_lr
    return [dict(params=rest, lr=config.lr), dict(params=policy, lr=policy_lr)]


# ---- data ----

def held_out_rows(config: TrainConfig, num_rows: int) -> Tuple[range, range]:
    """(training rows, validation rows) of a training split of ``num_rows`` rows.

    ``eval_split: val`` holds out the last ``val_images`` rows for validation (model selection never sees the
    test split); any other eval_split is a split of its own and every row trains.
    """
    if config.eval_split != VAL_SPLIT:
        return range(num_rows), range(0)
    if config.val_images >= num_rows:
        raise ValueError(f"val_images {config.val_images} leaves no training rows: the '{config.train_split}' split "
                         f"of {config.data} has {num_rows}")
    return range(num_rows - config.val_images), range(num_rows - config.val_images, num_rows)


def train_split(config: TrainConfig, model, seeds):
    """The map-style training split (without the held-out validation rows): rows of {'pixel_values', 'label',
    'seed'}, augmented per sample seed."""
    dataset = load_split(config.data, config.train_split)
    image_column, label_column = find_columns(dataset, config.image_column, config.label_column)
    rows, _ = held_out_rows(config, len(dataset))
    if config.max_train_samples is not None:
        rows = rows[:config.max_train_samples]
    if len(rows) < len(dataset):
        dataset = dataset.select(rows)
    check_labels(dataset, label_column, model.num_classes, config.data)
    return with_seeded_transform(with_index(dataset), train_transform(model), image_column, label_column, seeds)


def eval_split(config: TrainConfig, model):
    """The evaluation split through the model's eval transform: rows of {'pixel_values', 'label'}; for
    ``eval_split: val`` the rows held out at the end of the training split."""
    held_out = config.eval_split == VAL_SPLIT
    dataset = load_split(config.data, config.train_split if held_out else config.eval_split)
    image_column, label_column = find_columns(dataset, config.image_column, config.label_column)
    rows = held_out_rows(config, len(dataset))[1] if held_out else range(len(dataset))
    if config.max_eval_samples is not None:
        rows = rows[:config.max_eval_samples]
    if len(rows) < len(dataset):
        dataset = dataset.select(rows)
    check_labels(dataset, label_column, model.num_classes, config.data)
    return with_transform(dataset, eval_transform(model), image_column, label_column)


def synced_batches(accelerator, loader: Iterable, limit: Optional[int] = None):
    """Batches of an unprepared loader (streaming), on the device, until any process runs out (or ``limit``).

    Streaming splits give processes slightly different numbers of rows; stopping all of them together keeps
    DDP's collectives matched.
    """
    from accelerate.utils import send_to_device

    iterator = iter(loader)
    count = 0
    while limit is None or count < limit:
        batch = next(iterator, None)
        exhausted = torch.tensor([batch is None], dtype=torch.float32, device=accelerator.device)
        if accelerator.reduce(exhausted, 'sum').item() > 0:
            return
        count += 1
        yield send_to_device(batch, accelerator.device)


# ---- schedule ----

def lr_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """LambdaLR over optimizer steps: linear warmup, then cosine to ``min_lr`` or steps at ``decay_epochs``.

    The factor is a closure of the config (not saved in the scheduler's state), so a resumed run recomputes it
    and only its step count comes from the checkpoint.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    milestones = sorted(int(round(e * steps_per_epoch)) for e in config.decay_epochs)
    floor = config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == 'step':
            return config.decay_ratio ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- statistics ----

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
        from accelerate.utils import gather_object
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


# ---- progress and checkpoints ----

@dataclass
class Progress:
    """Where a run is: ``epoch`` (0-based, the one under way), ``batch`` (batches this process has consumed in
    it), ``step`` (optimizer steps so far), and the metrics of the finished epochs."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    num_processes: int = 1


def checkpoint_dirs(output_dir) -> List[Path]:
    """The complete checkpoints (those with progress.json) under ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / PROGRESS).is_file())


def find_checkpoint(resume_from: str, output_dir) -> Path:
    """The checkpoint ``--resume-from`` names: 'latest' (in ``output_dir``), a checkpoint, or an output folder."""
    if resume_from == 'latest':
        found = checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f'--resume-from latest: no checkpoint in {Path(output_dir) / CHECKPOINTS} '
                                    f'(nothing to resume; drop --resume-from to start)')
        return found[-1]
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f'--resume-from {resume_from}: no such folder')
    if (path / PROGRESS).is_file():
        return path
    found = checkpoint_dirs(path)
    if found:
        return found[-1]
    raise FileNotFoundError(f'--resume-from {resume_from}: no training state there (expected a checkpoint folder '
                            f'with {PROGRESS}, or an output folder with {CHECKPOINTS}/)')


def check_fresh(output_dir) -> None:
    """A run that does not resume must not start in a folder holding another run's checkpoints."""
    if checkpoint_dirs(output_dir):
        raise ValueError(f'{output_dir} already holds checkpoints of a run: continue it with --resume-from latest, '
                         f'or choose another --output-dir')


def save_checkpoint(accelerator, output_dir, progress: Progress, stats: PolicyStats, keep: int) -> Path:
    """accelerate's ``save_state`` plus this run's progress; every process must call it."""
    name = f'step_{progress.step:09d}_epoch_{progress.epoch:05d}_{progress.batch:07d}'
    folder = Path(output_dir) / CHECKPOINTS / name
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    (folder / f'stats_{accelerator.process_index}.json').write_text(json.dumps(stats.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.num_processes = accelerator.num_processes
        tmp = folder / (PROGRESS + '.tmp')
        tmp.write_text(json.dumps(asdict(progress)))
        tmp.replace(folder / PROGRESS)  # written last: a checkpoint without it is incomplete
        complete = checkpoint_dirs(output_dir)
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in (Path(output_dir) / CHECKPOINTS).iterdir():
            if partial.is_dir() and not (partial / PROGRESS).is_file() and partial.name < folder.name:
                shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(accelerator, folder) -> Tuple[Progress, PolicyStats]:
    """Restore model, optimizer, scheduler and RNG states; return the progress and this process's statistics.

    A checkpoint written by a different number of processes resumes too (at the same global batch size): the
    main process takes over all the running statistics.
    """
    folder = Path(folder)
    accelerator.load_state(str(folder))
    progress = Progress(**json.loads((folder / PROGRESS).read_text()))
    stats = PolicyStats()
    if progress.num_processes == accelerator.num_processes:
        files = [folder / f'stats_{accelerator.process_index}.json']
    else:
        files = sorted(folder.glob('stats_*.json')) if accelerator.is_main_process else []
    for file in files:
        stats.merge(PolicyStats.from_state_dict(json.loads(file.read_text())))
    return progress, stats


# ---- logs and the final model ----

class JsonLines:
    """An append-only JSON-lines log written by the main process."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open('a') as f:
                f.write(json.dumps(record) + '\n')

    def rewrite(self, records: List[Dict[str, Any]]) -> None:
        if self.enabled:
            self.path.write_text(''.join(json.dumps(r) + '\n' for r in records))

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, keep) -> None:
        """Drop the records for which ``keep(record)`` is false (a resumed run rewrites what it redoes)."""
        if self.enabled:
            self.rewrite([r for r in self.read() if keep(r)])


def save_model(model, folder) -> Path:
    """The model in timm's save_for_hf layout, loadable with ``timm.create_model('local-dir:...')``."""
    from timm.models import save_for_hf
    folder = Path(folder)
    tmp = folder.with_name(folder.name + '.tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    save_for_hf(model, tmp, safe_serialization=True)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


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
