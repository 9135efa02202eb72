"""BlockDrop stage 2: joint finetuning of the policy network and the ResNet.

Paper Sec. 3.3 and Alg. 1 lines 14-16. Starting from a curriculum run (--init-from), policy and ResNet learn
together: loss = REINFORCE term (reward 1 - (|u|/K)^2 if correct, else -gamma; self-critical greedy baseline;
alpha-bounded sampling; summed over the batch as the reference code) + cross-entropy of the ResNet under the
sampled policy. No curriculum: the policy decides all K blocks.

    accelerate launch recipes/finetune.py --config recipes/configs/cifar10_resnet32_ft.yaml \
        --init-from outputs/cifar10_resnet32_cl [--output-dir D] [--epochs N] [--max-train-samples N] \
        [--max-eval-samples N] [--resume-from D|latest] [--data PATH_OR_HUB_ID] [--batch-size N] \
        [--set KEY=VALUE ...]

The same script runs on one CPU, on N CPU processes (``accelerate launch --multi_gpu --num_processes N``; it
asks Accelerate for CPU processes when there is no GPU) and on N GPUs. Outputs: see timm_blockdrop/train/run.py.
"""
import copy
import json
import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from timm_blockdrop.train import run
from timm_blockdrop.errors import USER_ERRORS
from timm_blockdrop.data import (SampleSeeds, make_loader, make_train_loader, streaming_train_split, train_transform,
                                 with_seeded_transform)
from timm_blockdrop.models.policies import greedy, heuristic_policy
from timm_blockdrop.train.reinforce import FinetuneStep, FixedPolicyStep
from timm_blockdrop.train.reward import reward
from timm_blockdrop.train.config import config_from_args, recipe_arguments, save_config

def evaluate(accelerator, model, loader, gamma, config):
    """The greedy policy (or the fixed heuristic policy) on the eval split, all processes' rows once each."""
    model.eval()
    stats = run.PolicyStats()
    generator = torch.Generator().manual_seed(config.seed)  # randomk: as blockdrop eval --seed (on 1 process)
    with torch.inference_mode(), accelerator.autocast():
        for images, labels in loader:
            if config.fixed_policy:
                keep = heuristic_policy(config.fixed_policy, images.shape[0], model.num_blocks, config.fixed_blocks,
                                        model.stage_sizes, generator).to(images.device)
            else:
                keep = greedy(model.policy_probs(images), model.threshold)
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
        # routed blocks that no row keeps (and a fixed policy's dropped blocks) take no part in the loss: DDP must
        # then look for unused parameters
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=config.exec_mode == 'routed' or config.fixed_policy is not None)],
    )
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    checkpoint = run.find_checkpoint(args.resume_from, output_dir) if args.resume_from else None
    if checkpoint is None:
        run.check_fresh(output_dir)
    batch_size = config.per_device_batch_size(accelerator.num_processes)
    accelerator.print(f'{accelerator.num_processes} process(es) on {accelerator.device} '
                      f'({accelerator.distributed_type}), {batch_size} images per process and step')

    # The curriculum's model (policy + ResNet); the step computes REINFORCE + cross-entropy. pg_weight = global
    # batch makes the policy-gradient term the reference's sum over the batch on any number of processes
    if not config.init_from:
        accelerator.print('warning: no --init-from: finetuning a fresh policy (the paper starts from the curriculum)')
    # distill_weight > 0: the ResNet as finetuning starts (all blocks, frozen) also teaches through its logits
    model = run.build_model(config)
    teacher = copy.deepcopy(model.base) if config.distill_weight else None
    if config.fixed_policy:  # a Table 1 (ft) baseline: the ResNet alone, under FirstK / RandomK / DistributeK
        step_fn = FixedPolicyStep(model, config.fixed_policy, config.fixed_blocks, gamma=config.gamma,
                                  mode=config.exec_mode, teacher=teacher, distill_weight=config.distill_weight,
                                  distill_temperature=config.distill_temperature)
    else:
        step_fn = FinetuneStep(model, gamma=config.gamma, pg_weight=config.batch_size, beta=config.beta,
                               entropy_form=config.entropy, mode=config.exec_mode, teacher=teacher,
                               distill_weight=config.distill_weight, distill_temperature=config.distill_temperature)

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

    # Optimizer on policy network (policy_lr) and ResNet (lr); prepare everything (DDP wraps the step module)
    optimizer = torch.optim.Adam(run.finetune_param_groups(model, config), lr=config.lr,
                                 weight_decay=config.weight_decay)
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
        record = dict(epoch=0, step=0, **evaluate(accelerator, model, eval_loader, config.gamma, config))
        progress.history.append(record)
        metrics.append(record)

    throughput = run.Throughput(accelerator.num_processes)
    for epoch in range(progress.epoch, config.epochs):
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
                   desc=f'epoch {epoch + 1}/{config.epochs}')
        for batch in bar:
            with accelerator.accumulate(step_fn):
                out = step_fn(batch['pixel_values'], batch['label'], batch['seed'])
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
                                      pg_loss=accelerator.reduce(out['pg_loss'], 'mean').item(),
                                      ce_loss=accelerator.reduce(out['ce_loss'], 'mean').item(),
                                      reward=mean_reward, lr=scheduler.get_last_lr()[0],
                                      **({'policy_lr': scheduler.get_last_lr()[1]} if config.policy_lr else {}),
                                      **({'kd_loss': accelerator.reduce(out['kd_loss'], 'mean').item()}
                                         if 'kd_loss' in out else {})))
                bar.set_postfix(loss=f'{loss:.3f}', reward=f'{mean_reward:.3f}')
            if progress.step % config.checkpoint_every_steps == 0:
                run.save_checkpoint(accelerator, output_dir, progress, stats, config.keep_checkpoints)
        bar.close()

        # End of epoch: statistics of all processes, evaluation, metrics line, checkpoint
        record = dict(epoch=epoch + 1, step=progress.step, lr=scheduler.get_last_lr()[0],
                      **({'policy_lr': scheduler.get_last_lr()[1]} if config.policy_lr else {}),
                      images_per_s=throughput.images_per_s(),
                      **stats.reduced(accelerator).summary('train'))
        if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.epochs:
            record.update(evaluate(accelerator, model, eval_loader, config.gamma, config))
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
    parser = recipe_arguments('BlockDrop stage 2: joint finetuning of policy network and ResNet.', 'finetune')
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, 'finetune')
        training_function(config, args)
    except USER_ERRORS as e:
        print(f'finetune: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
