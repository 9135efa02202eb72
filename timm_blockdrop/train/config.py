"""Training configuration: a YAML file of known keys, overridden from the command line.

``load_config(path, overrides)`` reads ``recipes/configs/*.yaml``, applies overrides (``--epochs 3`` or
``--set key=value``), checks every key and value, and returns a ``TrainConfig``. Unknown keys, wrong types and
values outside their range are errors that name the key. ``${BLOCKDROP_SHARED}`` in a string value is the shared
folder (the environment variable, default ``../shared``). Each run writes its resolved config next to its metrics
(``save_config``), so every number it produced can be regenerated from what sits beside it.
"""
import argparse
import dataclasses
import difflib
import math
import os
import string
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..errors import USER_ERRORS
from .curriculum import check_cl_step
from ..models.policies import check_alpha, check_threshold
from .reinforce import ENTROPY_FORMS
from .reward import check_gamma

__all__ = ['STAGES', 'VAL_SPLIT', 'TrainConfig', 'load_config', 'parse_set', 'save_config', 'config_keys',
           'recipe_arguments', 'config_from_args', 'recipe_main', 'RESUMABLE_KEYS', 'resume_changes']

STAGES = ('curriculum', 'finetune')
VAL_SPLIT = 'val'  # eval_split naming the rows held out at the end of train_split
SCHEDULES = ('cosine', 'step')
PRECISIONS = ('no', 'fp16', 'bf16')


@dataclass
class TrainConfig:
    """Every setting of a training run; the YAML files in recipes/configs set these keys."""

    stage: str = 'curriculum'               # curriculum (stage 1: policy only) | finetune (stage 2: policy + ResNet)
    # ---- model ----
    model: str = 'cifar_resnet32'           # timm name of the base ResNet
    pretrained_file: Optional[str] = None   # its weight file (None: timm's pretrained weights for `model`, its tag)
    base_pretrained: bool = True            # false: the base starts from random weights (smoke runs, tests)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # base construction arguments, e.g. {shortcut: B}
    policy_model: Optional[str] = None      # policy network (None: ResNet-8 for CIFAR, ResNet-10 @112 px otherwise)
    policy_img_size: Optional[int] = None   # the policy sees the image average-pooled to this size (None: wrap()'s
                                            # default, the full CIFAR image or 112 px)
    init_from: Optional[str] = None         # finetune: the curriculum's output folder (or its model/ folder)
    # ---- data (HF datasets: a Hub id or a local folder) ----
    data: str = '${BLOCKDROP_SHARED}/data/cifar10'
    train_split: str = 'train'
    eval_split: str = 'val'                 # 'val': the last val_images rows of train_split, held out from training
                                            # (Sec. 4 selects on held-out data; the test split is never read). Any
                                            # other name is a split of its own and nothing is held out
    val_images: int = 5000                  # rows at the end of train_split that form the 'val' split
    image_column: Optional[str] = None      # None: the datasets.Image column
    label_column: Optional[str] = None      # None: the ClassLabel column
    streaming: bool = False                 # stream the training split (ImageNet); the eval split is downloaded
    shuffle_buffer: int = 10000             # streaming shuffle buffer
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    num_workers: int = 4
    # ---- algorithm (paper Sec. 3.3) ----
    alpha: float = 0.8                      # exploration bound: s' = alpha s + (1 - alpha)(1 - s), in (0.5, 1]
    gamma: float = 1.0                      # penalty of a wrong prediction: its reward is -gamma (Eq. 3)
    beta: float = 0.1                       # entropy bonus (curriculum; the reference has none in finetuning)
    entropy: str = 'reference'              # reference (-s log s, as Tushar-N/blockdrop) | bernoulli (full entropy)
    cl_step: int = 1                        # curriculum: blocks handed to the policy per epoch
    policy_init_from_base: bool = False     # curriculum: copy the base ResNet's weights into the policy network's
                                            # layers of the same name and shape (stem, first block of each stage)
    policy_init_keep: Optional[float] = None  # curriculum: start the policy at keep probability p for every block
                                            # (classifier bias logit(p); None: timm's init, about 0.5)
    threshold: float = 0.5                  # greedy policy: keep block k where s_k >= threshold
    exec_mode: str = 'masked'               # finetune: sampled pass masked (as the reference) or routed
    fixed_policy: Optional[str] = None      # finetune: firstk | randomk | distributek: train the ResNet under this
    fixed_blocks: Optional[int] = None      # heuristic with k = fixed_blocks (Table 1 baselines, ft), no policy net
    distill_weight: float = 0.0             # finetune: + w T^2 KL(full ResNet || ResNet under u) at temperature T
    distill_temperature: float = 4.0        # (the teacher: the ResNet as finetuning starts, all blocks, frozen)
    teacher_model: Optional[str] = None     # finetune: the teacher instead, a timm name (e.g. cifar_resnet56) ...
    teacher_file: Optional[str] = None      # ... and its weight file (None: timm's pretrained weights)
    budget_blocks: Optional[float] = None   # a block budget (issue 11; not in the paper): the reward pays a price per
                                            # block, raised by dual ascent until the greedy policy keeps this many
                                            # blocks on average (train/budget.py). None: the paper's reward alone
    budget_lr: float = 0.05                 # dual-ascent step of that price per optimizer step
    # ---- optimisation ----
    epochs: int = 1
    batch_size: int = 256                   # global: over all processes and accumulation steps
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 256              # per process
    lr: float = 1e-3
    policy_lr: Optional[float] = None       # finetune: lr of the policy network (None: lr); the ResNet uses lr
                                            # (both follow the same schedule: cosine floor = min_lr / lr of each)
    weight_decay: float = 0.0
    lr_schedule: str = 'cosine'             # cosine (to min_lr) | step (x decay_ratio at each of decay_epochs)
    warmup_epochs: float = 0.0              # linear warmup from 0
    min_lr: float = 0.0                     # cosine floor
    decay_epochs: List[float] = field(default_factory=list)
    decay_ratio: float = 0.1
    mixed_precision: str = 'no'             # no | fp16 | bf16
    seed: int = 0
    # ---- outputs ----
    output_dir: str = 'outputs/run'
    checkpoint_every_steps: int = 500       # optimizer steps between checkpoints (also saved at each epoch end)
    keep_checkpoints: int = 2               # newest checkpoints kept
    log_every_steps: int = 10               # optimizer steps between lines of steps.jsonl
    eval_every_epochs: int = 1              # evaluate every N epochs (and after the last)
    eval_at_start: bool = False             # evaluate once before training (epoch 0 of metrics.jsonl)

    def per_device_batch_size(self, num_processes: int) -> int:
        """The batch each process runs per forward: batch_size / (processes x accumulation steps)."""
        split = num_processes * self.gradient_accumulation_steps
        if self.batch_size % split:
            raise ValueError(f'batch_size {self.batch_size} (global) is not divisible by {num_processes} processes x '
                             f'{self.gradient_accumulation_steps} gradient accumulation steps')
        return self.batch_size // split

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def config_keys() -> List[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _shared_dir() -> str:
    return os.environ.get('BLOCKDROP_SHARED', '../shared')


def _expand(value):
    if isinstance(value, str):
        return string.Template(value).safe_substitute(BLOCKDROP_SHARED=_shared_dir())
    return value


def _coerce(key: str, value, annotation):
    """``value`` as the type ``annotation`` of ``key`` says, or a ValueError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def bad(what):
        return ValueError(f"config key '{key}' must be {what}, got {value!r}")

    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad('true or false')
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad('an integer')
        try:
            number = float(value)
        except ValueError:
            raise bad('an integer') from None
        if not number.is_integer():
            raise bad('an integer')
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise bad('a number')
        try:
            number = float(value)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise bad('a number') from None
        if not math.isfinite(number):
            raise bad('a finite number')
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise bad('a string')
        return _expand(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad('a mapping')
        return {k: _expand(v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad('a list')
        return [_coerce(key, v, args[0]) for v in value]
    raise TypeError(f'unsupported config type {annotation} for {key}')


def _check(config: TrainConfig) -> TrainConfig:
    def positive(key, allow_zero=False):
        v = getattr(config, key)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            raise ValueError(f"config key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {v}")

    def one_of(key, choices):
        if getattr(config, key) not in choices:
            raise ValueError(f"config key '{key}' must be one of {', '.join(choices)}, got {getattr(config, key)!r}")

    one_of('stage', STAGES)
    one_of('lr_schedule', SCHEDULES)
    one_of('mixed_precision', PRECISIONS)
    one_of('entropy', ENTROPY_FORMS)
    one_of('exec_mode', ('masked', 'routed'))
    config.alpha = check_alpha(config.alpha)
    config.gamma = check_gamma(config.gamma)
    config.threshold = check_threshold(config.threshold)
    config.cl_step = check_cl_step(config.cl_step)
    for key in ('batch_size', 'gradient_accumulation_steps', 'eval_batch_size', 'lr', 'checkpoint_every_steps',
                'keep_checkpoints', 'log_every_steps', 'eval_every_epochs', 'shuffle_buffer',
                'max_train_samples', 'max_eval_samples'):
        positive(key)
    positive('policy_lr')
    positive('distill_temperature')
    positive('budget_lr')
    positive('policy_img_size')
    positive('budget_blocks', allow_zero=True)
    if config.budget_blocks is not None and config.fixed_policy is not None:
        raise ValueError("config key 'budget_blocks' budgets the learned policy; 'fixed_policy' runs no policy: "
                         "set one of them")
    if config.pretrained_file is not None and not config.base_pretrained:
        raise ValueError("config key 'pretrained_file' gives the base's weights but 'base_pretrained' is false "
                         "(random weights): set one of them")
    if config.teacher_file is not None and config.teacher_model is None:
        raise ValueError("config key 'teacher_file' is the weight file of 'teacher_model', which is not set")
    for key in ('epochs', 'beta', 'distill_weight', 'weight_decay', 'warmup_epochs', 'min_lr', 'num_workers', 'seed',
                'val_images'):
        positive(key, allow_zero=True)
    if config.eval_split == VAL_SPLIT and config.val_images == 0:
        raise ValueError(f"config key 'eval_split' is '{VAL_SPLIT}' (rows held out of '{config.train_split}') but "
                         f"'val_images' is 0: hold out some rows, or name another eval_split")
    if config.eval_split == VAL_SPLIT and config.streaming:
        raise ValueError(f"config key 'eval_split' is '{VAL_SPLIT}', rows held out of the training split, which a "
                         f"streaming run cannot do: name an eval_split of its own (e.g. validation)")
    if not 0 < config.decay_ratio <= 1:
        raise ValueError(f"config key 'decay_ratio' must lie in (0, 1], got {config.decay_ratio}")
    if config.min_lr > config.lr:
        raise ValueError(f"config key 'min_lr' ({config.min_lr}) must not exceed 'lr' ({config.lr})")
    if config.policy_init_keep is not None:
        if not 0 < config.policy_init_keep < 1:
            raise ValueError(f"config key 'policy_init_keep' must lie in (0, 1), got {config.policy_init_keep}")
        if config.stage != 'curriculum':
            raise ValueError("config key 'policy_init_keep' is for stage curriculum (finetuning starts from the "
                             "curriculum's policy)")
    if config.fixed_policy is not None:
        one_of('fixed_policy', ('firstk', 'randomk', 'distributek'))
        if config.fixed_blocks is None or config.fixed_blocks < 0:
            raise ValueError(f"config key 'fixed_policy' ({config.fixed_policy}) needs 'fixed_blocks' (k >= 0), "
                             f"got {config.fixed_blocks}")
    elif config.fixed_blocks is not None:
        raise ValueError("config key 'fixed_blocks' is the k of 'fixed_policy', which is not set")
    if config.policy_init_from_base and config.stage != 'curriculum':
        raise ValueError("config key 'policy_init_from_base' is for stage curriculum (finetuning starts from the "
                         "curriculum's policy)")
    for key, default in (('policy_lr', None), ('distill_weight', 0.0), ('fixed_policy', None)):
        if getattr(config, key) != default and config.stage != 'finetune':
            raise ValueError(f"config key '{key}' is for stage finetune (the curriculum trains the policy alone, "
                             f"at 'lr')")
    if config.init_from and config.stage != 'finetune':
        raise ValueError("config key 'init_from' is for stage finetune (a curriculum output folder)")
    config.per_device_batch_size(1)  # batch_size divisible by the accumulation steps
    return config


def load_config(path: Optional[str], overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The config of YAML file ``path`` (None: the defaults) with ``overrides`` applied, checked."""
    values: Dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f'config file not found: {path}')
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f'config file {path} is not valid YAML: {e}') from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f'config file {path} must be a mapping of keys to values, got {type(loaded).__name__}')
        values.update(loaded)
    from_file = set(values)
    values.update(overrides or {})
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    unknown = [k for k in values if k not in known]
    if unknown:
        msgs = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), known, n=1)
            where = f'in {path}' if k in from_file and k not in (overrides or {}) else 'on the command line'
            msgs.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else '') + f' {where}')
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(msgs)}; "
                         f"known keys: {', '.join(known)}")
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    config = TrainConfig(**kwargs)
    config.data = _expand(config.data)
    return _check(config)


def parse_set(items: Optional[List[str]]) -> Dict[str, Any]:
    """``--set key=value`` items as a dict; values are read as YAML (``--set decay_epochs=[10,20]``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'--set expects key=value, got {item!r}')
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def save_config(config: TrainConfig, path) -> None:
    """Write the resolved config as YAML (loadable by ``load_config``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# command-line flags every recipe takes that override the config key of the same name
_FLAG_KEYS = ('output_dir', 'epochs', 'init_from', 'batch_size', 'data', 'max_train_samples', 'max_eval_samples')


def recipe_arguments(description: str, stage: str) -> argparse.ArgumentParser:
    """The command line of ``recipes/<stage>.py``: the config file, overrides, resuming, CPU."""
    suffix = {'curriculum': 'cl', 'finetune': 'ft'}[stage]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', required=True, help=f'YAML config (recipes/configs/*_{suffix}.yaml)')
    if stage == 'finetune':
        parser.add_argument('--init-from', help='the curriculum output folder (or its model/ folder)')
    parser.add_argument('--output-dir', help='where metrics, checkpoints and the model go (config: output_dir)')
    parser.add_argument('--epochs', type=int)
    parser.add_argument('--batch-size', type=int, help='global batch size')
    parser.add_argument('--max-train-samples', type=int)
    parser.add_argument('--max-eval-samples', type=int)
    parser.add_argument('--data', help='HF datasets Hub id or local folder')
    parser.add_argument('--resume-from', help="'latest' (in the output folder), a checkpoint or an output folder")
    parser.add_argument('--set', action='append', metavar='KEY=VALUE', help='override any config key (repeatable)')
    parser.add_argument('--cpu', action='store_true', help='train on the CPU even if there is a GPU')
    return parser


# what a resumed run may change: how long it runs (epochs, only upwards) and how it logs, checkpoints and evaluates
RESUMABLE_KEYS = ('epochs', 'output_dir', 'num_workers', 'eval_batch_size', 'checkpoint_every_steps',
                  'keep_checkpoints', 'log_every_steps', 'eval_every_epochs', 'eval_at_start')


def resume_changes(saved: TrainConfig, config: TrainConfig) -> Dict[str, Tuple[Any, Any]]:
    """The keys whose values differ between a run's saved config and the config that resumes it, as (old, new).

    A change to a key that defines the run (model, data, batch size, seed, schedule, algorithm: anything but
    RESUMABLE_KEYS), or fewer epochs, is a ValueError naming each key and both values.
    """
    old, new = saved.to_dict(), config.to_dict()
    changes = {k: (old[k], new[k]) for k in new if old.get(k) != new[k] and k != 'output_dir'}  # (a moved run)
    refused = [k for k, (a, b) in changes.items() if k not in RESUMABLE_KEYS or (k == 'epochs' and b < a)]
    if refused:
        raise ValueError('the config differs from the run it resumes in ' +
                         ', '.join(f'{k} ({changes[k][0]!r} -> {changes[k][1]!r})' for k in refused) +
                         ': resume with the values the run started with (epochs may grow; '
                         f"{', '.join(RESUMABLE_KEYS[1:])} may change), or start a new run in another --output-dir")
    return changes


def recipe_main(stage: str, doc: str, training_function, argv=None) -> int:
    """A recipe's command line (described by the first line of ``doc``): parse, load the config, train; a user
    error ends in one line and status 2."""
    args = recipe_arguments(doc.strip().splitlines()[0], stage).parse_args(argv)
    try:
        training_function(config_from_args(args, stage), args)
    except USER_ERRORS as e:
        print(f'{stage}: error: {e}', file=sys.stderr)
        return 2
    return 0


def config_from_args(args, stage: str) -> TrainConfig:
    """The config file of ``args`` with ``--set`` and the flags applied, checked to be for ``stage``."""
    overrides = parse_set(args.set)
    overrides.update({k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None})
    config = load_config(args.config, overrides)
    if config.stage != stage:
        raise ValueError(f'{args.config} is a {config.stage} config: run it with recipes/{config.stage}.py')
    return config
