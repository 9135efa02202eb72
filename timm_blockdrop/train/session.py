"""What both recipes share around their training loops, behind one call: ``run = prepare(config, accelerator,
rollout, optimizer, resume_from)``.

``prepare`` builds the data (per-sample seeds, the held-out validation split), lets Accelerate wrap the rollout,
optimizer and loaders (DDP on N processes), makes the LR schedule, resumes from a checkpoint or starts fresh, and
opens the logs. The returned ``TrainingRun`` hands the loop its batches (``run.batches(epoch)``), books each
step (``run.record``: statistics, schedule, logs, checkpoints), evaluates a policy on the validation split
(``run.evaluate``), closes an epoch (``run.end_epoch``) and saves the model (``run.finish``). An output folder:

```
config.yaml        the resolved config
metrics.jsonl      one line per epoch (train / val accuracy, reward, blocks, unique policies, images/s, lr)
steps.jsonl        one line every log_every_steps optimizer steps (loss, reward, lr)
checkpoints/       see checkpointing.py
model/             the final model in timm's save_for_hf layout (model.safetensors + config.json)
model_best/        with best_metric: the model of the evaluated epoch highest on it (epoch 0: the starting model)
```
"""
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from accelerate import DataLoaderConfiguration, skip_first_batches
from accelerate.utils import DistributedDataParallelKwargs, broadcast, broadcast_object_list, send_to_device
from tqdm.auto import tqdm

from ..data import (SampleSeeds, make_loader, make_train_loader, streaming_train_split, train_transform,
                    with_seeded_transform)
from .checkpointing import (MODEL_BEST_DIR, MODEL_DIR, Progress, check_fresh, find_checkpoint, resume_state,
                            save_checkpoint, save_model)
from .config import TrainConfig, load_config, resume_changes, save_config
from .lock import OutputLock, exit_with_parent
from .logs import JsonLines
from .reward import reward
from .schedule import lr_scheduler
from .splits import eval_split, train_split
from .stats import PolicyStats, Throughput

__all__ = ['accelerator_options', 'take_lock', 'prepare', 'TrainingRun', 'synced_batches', 'sync_buffers']


def accelerator_options(config: TrainConfig, cpu: bool, find_unused_parameters: bool = False) -> Dict[str, Any]:
    """``Accelerator(**...)`` of a run: CPU processes when asked or without GPU (multi-process CPU runs need
    cpu=True), the config's precision and accumulation, the seedable sampler (same batches on 1 or N processes),
    and ``find_unused_parameters`` for DDP where some parameters may take no part in a step's loss."""
    return dict(
        cpu=cpu or not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps, step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])


def synced_batches(accelerator, loader: Iterable, limit: Optional[int] = None):
    """Batches of an unprepared loader (streaming), on the device, until any process runs out (or ``limit``).

    Streaming splits give processes slightly different numbers of rows; stopping all of them together keeps
    DDP's collectives matched.
    """
    iterator = iter(loader)
    count = 0
    while limit is None or count < limit:
        batch = next(iterator, None)
        exhausted = torch.tensor([batch is None], dtype=torch.float32, device=accelerator.device)
        if accelerator.reduce(exhausted, 'sum').item() > 0:
            return
        count += 1
        yield send_to_device(batch, accelerator.device)


def sync_buffers(accelerator, model: torch.nn.Module) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step each process holds
    the statistics of its own last batch: evaluating or saving without this mixes models.
    """
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            buffer.copy_(broadcast(buffer.detach().clone(), from_process=0))


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def take_lock(accelerator, output_dir: Path) -> Optional[OutputLock]:
    """The main process locks the output folder; every process raises the same sentence if it is in use."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = OutputLock(output_dir).acquire()
        except ValueError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error], from_process=0)[0]
    if error:
        raise ValueError(error)
    return lock


def prepare(config: TrainConfig, accelerator, rollout: torch.nn.Module, optimizer: torch.optim.Optimizer,
            resume_from: Optional[str] = None) -> 'TrainingRun':
    """Data, Accelerate's wrapping, schedule, resumed state and logs of a run (see the module docstring)."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f'--output-dir {output_dir} is a file, not a folder: name a folder (new or a run\'s)')
    exit_with_parent()  # killing `accelerate launch` ends this process too: no orphan keeps writing
    checkpoint = find_checkpoint(resume_from, output_dir) if resume_from else None
    changes = {}
    if checkpoint is not None and (checkpoint.parent.parent / 'config.yaml').is_file():
        changes = resume_changes(load_config(checkpoint.parent.parent / 'config.yaml'), config)
    lock = take_lock(accelerator, output_dir)
    try:
        if checkpoint is None:
            check_fresh(output_dir)
        return _prepared_run(config, accelerator, rollout, optimizer, checkpoint, changes, lock)
    except BaseException:
        if lock is not None:
            lock.release()  # (a refused run in a Python session must not keep the folder locked)
        raise


def _prepared_run(config, accelerator, rollout, optimizer, checkpoint, changes, lock) -> 'TrainingRun':
    output_dir = Path(config.output_dir)
    batch_size = config.per_device_batch_size(accelerator.num_processes)
    accelerator.print(f'{accelerator.num_processes} process(es) on {accelerator.device} '
                      f'({accelerator.distributed_type}), {batch_size} images per process and step')
    model = rollout.model
    rollout.to(memory_format=_memory_format(config))  # (and the teacher: timm's train.py --channels-last)
    seeds = SampleSeeds(config.seed, stream=accelerator.process_index if config.streaming else 0)
    eval_loader = make_loader(eval_split(config, model), config.eval_batch_size, num_workers=config.num_workers)
    stream = None
    if config.streaming:
        stream = streaming_train_split(config.data, config.train_split, config.image_column, config.label_column,
                                       config.seed, config.shuffle_buffer, accelerator.process_index,
                                       accelerator.num_processes, config.max_train_samples,
                                       num_classes=model.num_classes)
        accum = config.gradient_accumulation_steps
        batches_per_epoch = stream[3] // accelerator.num_processes // batch_size // accum * accum
        rollout, optimizer, eval_loader = accelerator.prepare(rollout, optimizer, eval_loader)
        train_loader = None
    else:
        train_loader = make_train_loader(train_split(config, model, seeds), batch_size, shuffle=True,
                                         num_workers=config.num_workers)
        rollout, optimizer, train_loader, eval_loader = accelerator.prepare(rollout, optimizer, train_loader,
                                                                            eval_loader)
        batches_per_epoch = len(train_loader)
    if batches_per_epoch < 1:
        raise ValueError(f'no complete batch of {config.batch_size} images per epoch: lower batch_size or use '
                         f'more training images')
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    scheduler = accelerator.prepare(lr_scheduler(optimizer.optimizer, config, steps_per_epoch))
    run = TrainingRun(config, accelerator, model, rollout, optimizer, scheduler, seeds, train_loader, stream,
                      eval_loader, batches_per_epoch, lock)
    if checkpoint is not None:
        run.progress, run.stats = resume_state(accelerator, checkpoint)
        accelerator.print(f'resumed from {checkpoint}: epoch {run.progress.epoch}, batch {run.progress.batch}, '
                          f'step {run.progress.step}')
    if accelerator.is_main_process:
        if not (output_dir / 'config.yaml').is_file():
            save_config(config, output_dir / 'config.yaml')
        elif changes:  # config.yaml stays the run's; what a resume changed is appended to its history
            JsonLines(output_dir / 'config_history.jsonl').append(
                dict(step=run.progress.step, changes={k: list(v) for k, v in changes.items()}))
        run.metrics.rewrite(run.progress.history)
        run.steps_log.truncate(lambda r: r['step'] <= run.progress.step)
    return run


class TrainingRun:
    """A prepared run: ``module`` (the rollout as Accelerate wrapped it), ``optimizer``, ``scheduler``, the
    ``progress`` (epoch, batch, step, metrics history) and the epoch's running ``stats``."""

    def __init__(self, config, accelerator, model, module, optimizer, scheduler, seeds, train_loader, stream,
                 eval_loader, batches_per_epoch, lock=None):
        self.config, self.accelerator, self.model, self.module = config, accelerator, model, module
        self.optimizer, self.scheduler, self.seeds = optimizer, scheduler, seeds
        self.train_loader, self.stream, self.eval_loader = train_loader, stream, eval_loader
        self.batches_per_epoch, self.lock = batches_per_epoch, lock
        self.output_dir = Path(config.output_dir)
        self.progress, self.stats = Progress(), PolicyStats()
        self.metrics = JsonLines(self.output_dir / 'metrics.jsonl', accelerator.is_main_process)
        self.steps_log = JsonLines(self.output_dir / 'steps.jsonl', accelerator.is_main_process)
        self.throughput = Throughput(accelerator.num_processes)
        self._bar = None

    def epochs(self) -> range:
        """The epochs still to run (0-based)."""
        return range(self.progress.epoch, self.config.epochs)

    def batches(self, epoch: int, desc: str = ''):
        """The epoch's training batches on the device, from where a resumed run left off, with a progress bar."""
        config, batch = self.config, self.progress.batch
        self.seeds.set_epoch(epoch)
        if self.stream is not None:
            stream, image_column, label_column, _ = self.stream
            rows = with_seeded_transform(stream.skip(batch * self.batch_size) if batch else stream,
                                         train_transform(self.model), image_column, label_column, self.seeds)
            rows.set_epoch(epoch)
            loader = make_train_loader(rows, self.batch_size, num_workers=config.num_workers)
            batches = synced_batches(self.accelerator, loader, limit=self.batches_per_epoch - batch)
        else:
            self.train_loader.set_epoch(epoch)
            batches = skip_first_batches(self.train_loader, batch) if batch else self.train_loader
        layout = _memory_format(config)  # each batch's images in the model's layout
        batches = (dict(b, pixel_values=b['pixel_values'].contiguous(memory_format=layout)) for b in batches)
        self.module.train()
        self.throughput.start()
        self._bar = tqdm(batches, total=self.batches_per_epoch, initial=batch, desc=f'epoch {epoch + 1}/'
                         f'{config.epochs}{desc}', disable=not self.accelerator.is_main_process)
        return self._bar

    @property
    def batch_size(self) -> int:
        return self.config.per_device_batch_size(self.accelerator.num_processes)

    def lrs(self) -> Dict[str, float]:
        """The current learning rates: lr (the first group) and, with policy_lr set, the policy network's."""
        lrs = self.scheduler.get_last_lr()
        return dict(lr=lrs[0], **({'policy_lr': lrs[1]} if self.config.policy_lr else {}))

    def record(self, keep: torch.Tensor, correct: torch.Tensor, rewards: torch.Tensor, loss: torch.Tensor,
               **losses: torch.Tensor) -> None:
        """Book a batch: statistics, and after an optimizer step the schedule, steps.jsonl (``loss``, ``losses``
        averaged over processes) and a checkpoint every ``checkpoint_every_steps``."""
        accelerator, progress, config = self.accelerator, self.progress, self.config
        progress.batch += 1
        self.throughput.add(keep.shape[0])
        self.stats.update(keep, correct, rewards, loss)
        if not accelerator.sync_gradients:
            return
        self.scheduler.step()
        progress.step += 1
        if progress.step % config.log_every_steps == 0:
            logged = {k: accelerator.reduce(v.detach(), 'mean').item() for k, v in dict(loss=loss, **losses).items()}
            mean_reward = accelerator.reduce(rewards.mean(), 'mean').item()
            self.steps_log.append(dict(step=progress.step, epoch=progress.epoch, batch=progress.batch, **logged,
                                       reward=mean_reward, **self.lrs()))
            self._bar.set_postfix(loss=f"{logged['loss']:.3f}", reward=f'{mean_reward:.3f}')
        if progress.step % config.checkpoint_every_steps == 0:
            save_checkpoint(accelerator, self.output_dir, progress, self.stats, config.keep_checkpoints)

    def evaluate(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, Any]:
        """``policy`` (images -> (B, K) keep) on the validation split, all processes' rows counted once each."""
        model, accelerator = self.model, self.accelerator
        model.eval()
        sync_buffers(accelerator, model)
        stats = PolicyStats()
        with torch.inference_mode(), accelerator.autocast():
            for images, labels in self.eval_loader:
                images = images.contiguous(memory_format=_memory_format(self.config))
                keep = policy(images)
                logits = model.forward_with_policy(images, keep, mode='routed')
                keep, preds, labels = accelerator.gather_for_metrics((keep, logits.argmax(1), labels))
                stats.update(keep, preds == labels, reward(keep, preds == labels, self.config.gamma))
        return stats.summary('val')

    def evaluates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with an evaluation: every eval_every_epochs, and the last."""
        return (epoch + 1) % self.config.eval_every_epochs == 0 or epoch + 1 == self.config.epochs

    def start(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """With eval_at_start, evaluate ``policy`` once before training (epoch 0 of metrics.jsonl)."""
        if self.config.eval_at_start and not self.progress.history:
            record = dict(epoch=0, step=0, **self.evaluate(policy))
            self._keep_if_best(record)
            self.progress.history.append(record)
            self.metrics.append(record)

    def end_epoch(self, epoch: int, val: Dict[str, Any], **extra) -> None:
        """Close an epoch: the statistics of all processes, ``val`` and ``extra`` in metrics.jsonl, a checkpoint."""
        self._bar.close()
        record = dict(epoch=epoch + 1, step=self.progress.step, **extra, **self.lrs(),
                      images_per_s=self.throughput.images_per_s(),
                      **self.stats.reduced(self.accelerator).summary('train'), **val)
        self._keep_if_best(record)
        self.progress.history.append(record)
        self.progress.epoch, self.progress.batch, self.stats = epoch + 1, 0, PolicyStats()
        save_checkpoint(self.accelerator, self.output_dir, self.progress, self.stats, self.config.keep_checkpoints)
        self.metrics.append(record)
        self.accelerator.print(json.dumps({k: float(f'{v:.4g}') if isinstance(v, float) else v
                                           for k, v in record.items()}))

    def _keep_if_best(self, record: Dict[str, Any]) -> None:
        """With best_metric, save the model as model_best/ when the evaluated ``record`` beats the best so far
        (a tie keeps the earlier epoch) and mark the record ``best``. Saved before the epoch's checkpoint: a run
        killed in between redoes the epoch and saves the same model again. A resume that sets or changes
        best_metric selects from its first evaluation on."""
        metric, best = self.config.best_metric, self.progress.best
        if metric is None or metric not in record:
            return
        if best is not None and best['metric'] == metric and record[metric] <= best['value']:
            return
        self.progress.best = dict(epoch=record['epoch'], metric=metric, value=record[metric])
        record['best'] = True
        if self.accelerator.is_main_process:  # (evaluate synced the buffers of all processes)
            save_model(self.model, self.output_dir / MODEL_BEST_DIR)

    def finish(self) -> None:
        """Save the trained model in timm's save_for_hf layout (blockdrop eval --checkpoint D/model)."""
        sync_buffers(self.accelerator, self.model)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            folder = save_model(self.model, self.output_dir / MODEL_DIR)
            best = self.progress.best
            self.accelerator.print(f'saved {folder}' + (f'; {MODEL_BEST_DIR}/ is epoch {best["epoch"]} '
                                                        f'({best["metric"]} {best["value"]:.4g})' if best else ''))
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()
