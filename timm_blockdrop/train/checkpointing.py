"""A run's training checkpoints and its final model.

```
checkpoints/       step_<global step>_epoch_<epoch>_<batch>/: accelerate's save_state (model.safetensors,
                   optimizer.bin, scheduler.bin, random_states_<rank>.pkl), stats_<rank>.json (the epoch's
                   running statistics) and progress.json (epoch, batch, step, metrics history), written last
model/             the final model in timm's save_for_hf layout (model.safetensors + config.json)
model_best/        with best_metric: the model of the evaluated epoch highest on it, in the same layout
```
Everything is loaded back with ``weights_only=True`` (accelerate's ``load_state``) or as JSON. The naming and
rotation are our own rather than ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=...)``:
accelerate deletes the oldest checkpoint before the new one is complete, and knows no completeness marker
(progress.json), so a kill during a save could leave one usable checkpoint fewer.
"""
import copy
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from accelerate.utils import load
from timm.models import save_for_hf

from ..errors import CheckpointError
from .stats import PolicyStats

__all__ = ['CHECKPOINTS', 'PROGRESS', 'MODEL_DIR', 'MODEL_BEST_DIR', 'Progress', 'checkpoint_dirs', 'find_checkpoint',
           'check_fresh', 'save_checkpoint', 'resume_state', 'follow_umask', 'save_model']

CHECKPOINTS = 'checkpoints'
PROGRESS = 'progress.json'
MODEL_DIR = 'model'
MODEL_BEST_DIR = 'model_best'


@dataclass
class Progress:
    """Where a run is: ``epoch`` (0-based, the one under way), ``batch`` (batches this process has consumed in
    it), ``step`` (optimizer steps so far), the metrics of the finished epochs, and with best_metric the epoch
    that model_best/ holds (``{'epoch', 'metric', 'value'}``)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    num_processes: int = 1
    best: Optional[Dict[str, Any]] = None


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
        follow_umask(folder)
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


def resume_state(accelerator, folder) -> Tuple[Progress, PolicyStats]:
    """Restore model, optimizer, scheduler and RNG states; return the progress and this process's statistics.

    A checkpoint written by a different number of processes resumes too (at the same global batch size): the
    main process takes over all the running statistics.
    """
    folder = Path(folder)
    states = folder / f'random_states_{accelerator.process_index}.pkl'
    try:  # accelerate skips a random-state file it cannot load without a word: refuse it instead
        load(states)
    except Exception as e:  # (whatever torch.load raises on a tampered or unsafe pickle)
        raise CheckpointError(f'{states} cannot be read safely ({type(e).__name__}): the checkpoint is damaged or was '
                              f'tampered with; resume from another checkpoint') from None
    try:
        accelerator.load_state(str(folder))
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatches, other parameter groups, missing keys
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'checkpoint {folder} does not fit this run\'s model and optimizer ({first[:200]}): '
                              f'resume a checkpoint of the same config and stage') from None
    progress = Progress(**json.loads((folder / PROGRESS).read_text()))
    stats = PolicyStats()
    if progress.num_processes == accelerator.num_processes:
        files = [folder / f'stats_{accelerator.process_index}.json']
    else:
        files = sorted(folder.glob('stats_*.json')) if accelerator.is_main_process else []
    for file in files:
        stats.merge(PolicyStats.from_state_dict(json.loads(file.read_text())))
    return progress, stats


def follow_umask(folder) -> None:
    """Give the files in ``folder`` the mode the umask asks for (safetensors writes them 0600 whatever it is)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def save_model(model, folder) -> Path:
    """The model in timm's save_for_hf layout, loadable with ``timm.create_model('local-dir:...')``.

    A contiguous copy is saved (safetensors takes no channels_last tensor): ``model`` itself is left as it is, so
    a run may save mid-training.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + '.tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    save_for_hf(copy.deepcopy(model).to(memory_format=torch.contiguous_format), tmp, safe_serialization=True)
    follow_umask(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder
