"""BlockDrop stage 1: curriculum learning of the policy network on a frozen pretrained ResNet.

Paper Sec. 3.3 and Alg. 1 lines 3-13. At epoch t the first K - t * cl_step blocks always run and the policy
learns to keep or drop the others, with REINFORCE: reward 1 - (|u|/K)^2 if correct, else -gamma (Eq. 3),
self-critical baseline (the greedy policy), alpha-bounded sampling, entropy bonus beta.

    accelerate launch recipes/curriculum.py --config recipes/configs/cifar10_resnet32_cl.yaml \
        [--output-dir D] [--epochs N] [--max-train-samples N] [--max-eval-samples N] \
        [--resume-from D|latest] [--data PATH_OR_HUB_ID] [--batch-size N] [--set KEY=VALUE ...]

The same script runs on one CPU, on N CPU processes (``accelerate launch --multi_gpu --num_processes N``; it
asks Accelerate for CPU processes when there is no GPU) and on N GPUs. Outputs: see timm_blockdrop/train/run.py.
"""
import json
import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from timm_blockdrop.train import curriculum
from timm_blockdrop.train import run
from timm_blockdrop.errors import USER_ERRORS
from timm_blockdrop.data import (SampleSeeds, make_loader, make_train_loader, streaming_train_split, train_transform,
                                 with_seeded_transform)
from timm_blockdrop.models.policies import greedy
from timm_blockdrop.train.reinforce import CurriculumStep
from timm_blockdrop.train.reward import reward
from timm_blockdrop.train.config import config_from_args, recipe_arguments, save_config

def evaluate(accelerator, model, loader, gamma, n_forced):
    """The greedy policy (with the curriculum's forced blocks) on the eval split, all processes' rows once each."""
    model.eval()
    stats = run.PolicyStats()
    with torch.inference_mode(), accelerator.autocast():
        for images, labels in loader:
            keep = curriculum.force_prefix(greedy(model.policy_probs(images), model.threshold), n_forced)
            logits = model.forward_with_policy(images, keep, mode='routed')
            keep, preds, labels = accelerator.gather_for_metrics((keep, logits.argmax(1), labels))
            stats.update(keep, preds == labels, reward(keep, preds == labels, gamma))
    return stats.summary('val')


def training_function(config, args):
    # Initialize accelerator (CPU processes when there is no GPU: multi-process CPU runs need cpu=True)
    accelerator = Accelerator(
        cpu=args.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    checkpoint = run.find_checkpoint(args.resume_from, output_dir) if args.resume_from else None
    if checkpoint is None:
        run.check_fresh(output_dir)
    batch_size = config.per_device_batch_size(accelerator.num_processes)
    accelerator.print(f'{accelerator.num_processes} process(es) on {accelerator.device} '
                      f'({accelerator.distributed_type}), {batch_size} images per process and step')

    # The pretrained ResNet (frozen) with a fresh policy network; the step computes the REINFORCE loss
    model = run.build_model(config)
    if config.policy_init_from_base:
        copied = run.init_policy_from_base(model)
        accelerator.print(f'policy network: {len(copied)} tensors copied from the base ResNet')
    if config.policy_init_keep is not None:
        run.init_policy_keep(model, config.policy_init_keep)
    num_blocks = model.num_blocks
    step_fn = CurriculumStep(model, gamma=config.gamma, beta=config.beta, entropy_form=config.entropy)

    # Data: per-sample seeds drive augmentation and policy sampling (same batches on 1 or N processes)
    seeds = SampleSeeds(config.seed, stream=accelerator.process_index if config.streaming else 0)
    if config.streaming:
        stream, image_column, label_column, rows = streaming_train_split(
            config.data, config.train_split, config.image_column, config.label_column, config.seed,
            config.shuffle_buffer, accelerator.process_index, accelerator.num_processes, config.max_train_samples)
        accum = config.gradient_accumulation_steps
        batches_per_epoch = rows // accelerator.num_processes // batch_size // accum * accum
        train_loader = None
    else:
        train_loader = make_train_loader(run.train_split(config, model, seeds), batch_size, shuffle=True,
                                         num_workers=config.num_workers)
    eval_loader = make_loader(run.eval_split(config, model), config.eval_batch_size, num_workers=config.num_workers)

    # Optimizer on the policy network only; prepare everything (DDP wraps the step module)
    optimizer = torch.optim.Adam(model.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if train_loader is not None:
        step_fn, optimizer, train_loader, eval_loader = accelerator.prepare(
            step_fn, optimizer, train_loader, eval_loader)
        batches_per_epoch = len(train_loader)
    else:
        step_fn, optimizer, eval_loader = accelerator.prepare(step_fn, optimizer, eval_loader)
    if batches_per_epoch < 1:
        raise ValueError(f'no complete batch of {config.batch_size} images per epoch: lower batch_size or use '
                         f'more training images')
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    scheduler = accelerator.prepare(run.lr_scheduler(optimizer.optimizer, config, steps_per_epoch))

    # Resume (model, optimizer, scheduler, RNG, epoch, batch, step, running statistics) or start
    progress, stats = run.Progress(), run.PolicyStats()
    if checkpoint is not None:
        progress, stats = run.load_checkpoint(accelerator, checkpoint)
        accelerator.print(f'resumed from {checkpoint}: epoch {progress.epoch}, batch {progress.batch}, '
                          f'step {progress.step}')
    metrics = run.JsonLines(output_dir / 'metrics.jsonl', accelerator.is_main_process)
    steps_log = run.JsonLines(output_dir / 'steps.jsonl', accelerator.is_main_process)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / 'config.yaml')
        metrics.rewrite(progress.history)
        steps_log.truncate(lambda r: r['step'] <= progress.step)
    if config.eval_at_start and not progress.history:
        record = dict(epoch=0, step=0, **evaluate(accelerator, model, eval_loader, config.gamma,
                                                  curriculum.num_forced(0, num_blocks, config.cl_step)))
        progress.history.append(record)
        metrics.append(record)

    throughput = run.Throughput(accelerator.num_processes)
    for epoch in range(progress.epoch, config.epochs):
        n_forced = curriculum.num_forced(epoch, num_blocks, config.cl_step)
        seeds.set_epoch(epoch)
        if config.streaming:
            rows_left = stream.skip(progress.batch * batch_size) if progress.batch else stream
            epoch_rows = with_seeded_transform(rows_left, train_transform(model), image_column, label_column, seeds)
            epoch_rows.set_epoch(epoch)
            batches = run.synced_batches(accelerator, make_train_loader(epoch_rows, batch_size,
                                                                        num_workers=config.num_workers),
                                         limit=batches_per_epoch - progress.batch)
        else:
            train_loader.set_epoch(epoch)
            batches = skip_first_batches(train_loader, progress.batch) if progress.batch else train_loader
        step_fn.train()
        throughput.start()
        bar = tqdm(batches, total=batches_per_epoch, initial=progress.batch, disable=not accelerator.is_main_process,
                   desc=f'epoch {epoch + 1}/{config.epochs} (policy on the last {num_blocks - n_forced}/{num_blocks})')
        for batch in bar:
            with accelerator.accumulate(step_fn):
                out = step_fn(batch['pixel_values'], batch['label'], batch['seed'], n_forced)
                accelerator.backward(out['loss'])
                optimizer.step()
                optimizer.zero_grad()
            progress.batch += 1
            throughput.add(batch['label'].shape[0])
            stats.update(out['keep'], out['correct'], out['reward'], out['loss'])
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            if progress.step % config.log_every_steps == 0:
                loss = accelerator.reduce(out['loss'].detach(), 'mean').item()
                mean_reward = accelerator.reduce(out['reward'].mean(), 'mean').item()
                steps_log.append(dict(step=progress.step, epoch=epoch, batch=progress.batch, loss=loss,
                                      reward=mean_reward, lr=scheduler.get_last_lr()[0]))
                bar.set_postfix(loss=f'{loss:.3f}', reward=f'{mean_reward:.3f}')
            if progress.step % config.checkpoint_every_steps == 0:
                run.save_checkpoint(accelerator, output_dir, progress, stats, config.keep_checkpoints)
        bar.close()

        # End of epoch: statistics of all processes, evaluation, metrics line, checkpoint
        record = dict(epoch=epoch + 1, step=progress.step, decided_blocks=num_blocks - n_forced,
                      lr=scheduler.get_last_lr()[0], images_per_s=throughput.images_per_s(),
                      **stats.reduced(accelerator).summary('train'))
        if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.epochs:
            record.update(evaluate(accelerator, model, eval_loader, config.gamma, n_forced))
        progress.history.append(record)
        progress.epoch, progress.batch, stats = epoch + 1, 0, run.PolicyStats()
        run.save_checkpoint(accelerator, output_dir, progress, stats, config.keep_checkpoints)
        metrics.append(record)
        accelerator.print(json.dumps({k: float(f'{v:.4g}') if isinstance(v, float) else v for k, v in record.items()}))

    # The trained model, in timm's save_for_hf layout (blockdrop eval --checkpoint D/model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = run.save_model(accelerator.unwrap_model(step_fn).model, output_dir / run.MODEL_DIR)
        accelerator.print(f'saved {folder}')
    accelerator.end_training()


def main(argv=None):
    args = recipe_arguments('BlockDrop stage 1: curriculum learning of the policy network.', 'curriculum').parse_args(argv)
    try:
        config = config_from_args(args, 'curriculum')
        training_function(config, args)
    except USER_ERRORS as e:
        print(f'curriculum: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
