"""Training configuration: a YAML file of known keys, overridden from the command line.

As timm's ``train.py``: the YAML file gives the values, the command line overrides them (``--epochs 3``, or any key
with ``--set key=value``). ``load_config(path, overrides)`` checks every key against ``TrainConfig``'s fields and
types and every value against its range, and returns a ``TrainConfig``; unknown keys, wrong types and values out of
range are errors that name the key. ``${BLOCKDROP_SHARED}`` in a string value is the shared folder (the environment
variable, default ``../shared``). Each run writes its resolved config next to its metrics (``save_config``), so
every number it produced can be regenerated from what sits beside it.
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

__all__ = ['STAGES', 'VAL_SPLIT', 'BEST_METRICS', 'TrainConfig', 'load_config', 'parse_set', 'save_config',
           'recipe_main', 'RESUMABLE_KEYS', 'resume_changes']

STAGES = ('curriculum', 'finetune')
VAL_SPLIT = 'val'  # eval_split naming the rows held out at the end of train_split
BEST_METRICS = ('val_accuracy', 'val_reward')  # what best_metric may select on (both: higher is better)


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
    fixed_blocks_max: Optional[int] = None  # randomk only: each image's k drawn from [fixed_blocks, fixed_blocks_max]
                                            # by its sample seed (a base robust at several depths; not in the paper)
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
    channels_last: bool = False             # model (and teacher) and images in torch.channels_last
    seed: int = 0
    # ---- outputs ----
    output_dir: str = 'outputs/run'
    checkpoint_every_steps: int = 500       # optimizer steps between checkpoints (also saved at each epoch end)
    keep_checkpoints: int = 2               # newest checkpoints kept
    log_every_steps: int = 10               # optimizer steps between lines of steps.jsonl
    eval_every_epochs: int = 1              # evaluate every N epochs (and after the last)
    eval_at_start: bool = False             # evaluate once before training (epoch 0 of metrics.jsonl)
    best_metric: Optional[str] = None       # val_accuracy | val_reward: also keep model_best/, the model of the
                                            # evaluated epoch highest on it (timm train.py's model_best); None: none

    def per_device_batch_size(self, num_processes: int) -> int:
        """The batch each process runs per forward: batch_size / (processes x accumulation steps)."""
        split = num_processes * self.gradient_accumulation_steps
        if self.batch_size % split:
            raise ValueError(f'batch_size {self.batch_size} (global) is not divisible by {num_processes} processes x '
                             f'{self.gradient_accumulation_steps} gradient accumulation steps')
        return self.batch_size // split

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---- types: each field's annotation read as (type, may be None); a value is checked with one isinstance ----

def _field_type(hint) -> Tuple[type, bool]:
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return _field_type(next(a for a in typing.get_args(hint) if a is not type(None)))[0], True
    return typing.get_origin(hint) or hint, False  # Dict[str, Any] -> dict, List[float] -> list


_TYPES = {k: _field_type(hint) for k, hint in typing.get_type_hints(TrainConfig).items()}
_NAMES = {bool: 'true or false', int: 'an integer', float: 'a finite number', str: 'a string', dict: 'a mapping',
          list: 'a list of numbers'}


def _expand(value):
    """``${BLOCKDROP_SHARED}`` in a string (or a mapping's strings) as the shared folder."""
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, str):
        return string.Template(value).safe_substitute(BLOCKDROP_SHARED=os.environ.get('BLOCKDROP_SHARED', '../shared'))
    return value


def _number(value):
    """An int or float as a float (YAML reads 1e-3, without a dot, as a string); anything else unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _coerce(key: str, value):
    """``value`` as the type of field ``key``, or a one-sentence ValueError naming the key."""
    kind, optional = _TYPES[key]
    if value is None and optional:
        return None
    if kind in (int, float):
        value = _number(value)
        value = int(value) if kind is int and isinstance(value, float) and value.is_integer() else value
    elif kind is list and isinstance(value, (list, tuple)):
        value = [_number(v) for v in value]
    numbers = [value] if kind is float else value if kind is list else []
    if (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
            or not all(isinstance(v, float) and math.isfinite(v) for v in numbers)):
        raise ValueError(f"config key '{key}' must be {_NAMES[kind]}, got {value!r}")
    return _expand(value)


# ---- ranges ----

_CHOICES = {'stage': STAGES, 'lr_schedule': ('cosine', 'step'), 'mixed_precision': ('no', 'fp16', 'bf16'),
            'entropy': ENTROPY_FORMS, 'exec_mode': ('masked', 'routed'),
            'fixed_policy': (None, 'firstk', 'randomk', 'distributek'), 'best_metric': (None,) + BEST_METRICS}
_POSITIVE = ('batch_size', 'gradient_accumulation_steps', 'eval_batch_size', 'lr', 'checkpoint_every_steps',
             'keep_checkpoints', 'log_every_steps', 'eval_every_epochs', 'shuffle_buffer', 'max_train_samples',
             'max_eval_samples', 'policy_lr', 'distill_temperature', 'budget_lr', 'policy_img_size')
_NON_NEGATIVE = ('budget_blocks', 'epochs', 'beta', 'distill_weight', 'weight_decay', 'warmup_epochs', 'min_lr',
                 'num_workers', 'seed', 'val_images')
_FT_ONLY = "(the curriculum trains the policy alone, at 'lr')"
_CL_ONLY = "(finetuning starts from the curriculum's policy)"
_STAGE_ONLY = {'policy_lr': ('finetune', _FT_ONLY), 'distill_weight': ('finetune', _FT_ONLY),
               'fixed_policy': ('finetune', _FT_ONLY), 'init_from': ('finetune', '(a curriculum output folder)'),
               'policy_init_keep': ('curriculum', _CL_ONLY), 'policy_init_from_base': ('curriculum', _CL_ONLY)}


def _check(c: TrainConfig) -> TrainConfig:
    """Each value in its range, and keys that contradict each other refused: a ValueError naming the key."""
    for key, choices in _CHOICES.items():
        if getattr(c, key) not in choices:
            raise ValueError(f"config key '{key}' must be one of {', '.join(filter(None, choices))}, "
                             f"got {getattr(c, key)!r}")
    c.alpha, c.gamma = check_alpha(c.alpha), check_gamma(c.gamma)
    c.threshold, c.cl_step = check_threshold(c.threshold), check_cl_step(c.cl_step)
    for keys, sign, bad in ((_POSITIVE, '> 0', lambda v: v <= 0), (_NON_NEGATIVE, '>= 0', lambda v: v < 0)):
        for key in keys:
            if getattr(c, key) is not None and bad(getattr(c, key)):
                raise ValueError(f"config key '{key}' must be {sign}, got {getattr(c, key)}")
    for key, (stage, why) in _STAGE_ONLY.items():
        if getattr(c, key) and c.stage != stage:  # set (not None, false or 0)
            raise ValueError(f"config key '{key}' is for stage {stage} {why}")
    for bad, message in (
            (c.budget_blocks is not None and c.fixed_policy is not None,
             "config key 'budget_blocks' budgets the learned policy; 'fixed_policy' runs no policy: set one of them"),
            (c.pretrained_file is not None and not c.base_pretrained,
             "config key 'pretrained_file' gives the base's weights but 'base_pretrained' is false (random weights): "
             "set one of them"),
            (c.teacher_file is not None and c.teacher_model is None,
             "config key 'teacher_file' is the weight file of 'teacher_model', which is not set"),
            (c.eval_split == VAL_SPLIT and c.val_images == 0,
             f"config key 'eval_split' is '{VAL_SPLIT}' (rows held out of '{c.train_split}') but 'val_images' is 0: "
             f"hold out some rows, or name another eval_split"),
            (c.eval_split == VAL_SPLIT and c.streaming,
             f"config key 'eval_split' is '{VAL_SPLIT}', rows held out of the training split, which a streaming run "
             f"cannot do: name an eval_split of its own (e.g. validation)"),
            (not 0 < c.decay_ratio <= 1, f"config key 'decay_ratio' must lie in (0, 1], got {c.decay_ratio}"),
            (c.min_lr > c.lr, f"config key 'min_lr' ({c.min_lr}) must not exceed 'lr' ({c.lr})"),
            (c.policy_init_keep is not None and not 0 < c.policy_init_keep < 1,
             f"config key 'policy_init_keep' must lie in (0, 1), got {c.policy_init_keep}"),
            (c.fixed_policy is not None and (c.fixed_blocks is None or c.fixed_blocks < 0),
             f"config key 'fixed_policy' ({c.fixed_policy}) needs 'fixed_blocks' (k >= 0), got {c.fixed_blocks}"),
            (c.fixed_policy is None and c.fixed_blocks is not None,
             "config key 'fixed_blocks' is the k of 'fixed_policy', which is not set"),
            (c.fixed_blocks_max is not None and c.fixed_policy != 'randomk',
             f"config key 'fixed_blocks_max' draws each image's k for fixed_policy 'randomk', but fixed_policy is "
             f"{c.fixed_policy!r}: set fixed_policy: randomk or drop fixed_blocks_max"),
            (c.fixed_blocks_max is not None and c.fixed_blocks is not None and c.fixed_blocks_max < c.fixed_blocks,
             f"config key 'fixed_blocks_max' ({c.fixed_blocks_max}) must not be below 'fixed_blocks' "
             f"({c.fixed_blocks}): each image's k is drawn from [fixed_blocks, fixed_blocks_max]")):
        if bad:
            raise ValueError(message)
    c.per_device_batch_size(1)  # batch_size divisible by the accumulation steps
    return c


# ---- files and the command line ----

def _refuse_unknown(values: Dict[str, Any], where: str) -> None:
    unknown = [f"'{k}'" + ''.join(f" (did you mean '{m}'?)" for m in difflib.get_close_matches(str(k), _TYPES, n=1))
               for k in values if k not in _TYPES]
    if unknown:
        raise ValueError(f"unknown config key{'s' * (len(unknown) > 1)} {', '.join(unknown)} {where}; "
                         f"known keys: {', '.join(_TYPES)}")


def load_config(path: Optional[str], overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The config of YAML file ``path`` (None: the defaults) with ``overrides`` applied, checked."""
    values: Dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f'config file not found: {path}')
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f'config file {path} is not valid YAML: {e}') from None
        if not isinstance(values, dict):
            raise ValueError(f'config file {path} must be a mapping of keys to values, got {type(values).__name__}')
        _refuse_unknown(values, f'in {path}')
    _refuse_unknown(overrides or {}, 'on the command line')
    values = {**values, **(overrides or {})}
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    config.data = _expand(config.data)  # the default names the shared folder too
    return _check(config)


def parse_set(items: Optional[List[str]]) -> Dict[str, Any]:
    """``--set key=value`` items as a dict; values are read as YAML (``--set decay_epochs=[10,20]``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ValueError(f'--set expects key=value, got {item!r}')
        out[key.strip()] = yaml.safe_load(value)  # an empty value is None
    return out


def save_config(config: TrainConfig, path) -> None:
    """Write the resolved config as YAML (loadable by ``load_config``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# what a resumed run may change: how long it runs (epochs, only upwards) and how it logs, checkpoints, evaluates
# and keeps its best model
RESUMABLE_KEYS = ('epochs', 'output_dir', 'num_workers', 'eval_batch_size', 'checkpoint_every_steps',
                  'keep_checkpoints', 'log_every_steps', 'eval_every_epochs', 'eval_at_start', 'best_metric')


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
    """``recipes/<stage>.py``'s command line (described by the first line of ``doc``): the config file, flags that
    override its keys of the same name, ``--set`` for any key; then train. A user error ends in one line, status 2."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument('--config', required=True,
                        help=f"YAML config (recipes/configs/*_{dict(curriculum='cl', finetune='ft')[stage]}.yaml)")
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
    args = parser.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in _TYPES and v is not None}  # --epochs etc.: config keys
    try:
        config = load_config(args.config, {**parse_set(args.set), **flags})
        if config.stage != stage:
            raise ValueError(f'{args.config} is a {config.stage} config: run it with recipes/{config.stage}.py')
        training_function(config, args)
    except USER_ERRORS as e:
        print(f'{stage}: error: {e}', file=sys.stderr)
        return 2
    return 0
