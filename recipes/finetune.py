"""BlockDrop stage 2: joint finetuning of the policy network and the ResNet.

Paper Sec. 3.3 and Alg. 1 lines 14-16. Starting from a curriculum run (--init-from), policy and ResNet learn
together: loss = REINFORCE term (reward 1 - (|u|/K)^2 if correct, else -gamma; self-critical greedy baseline;
alpha-bounded sampling; summed over the batch as the reference code) + cross-entropy of the ResNet under the
sampled policy (+ distillation of the full ResNet, beyond the paper). No curriculum: the policy decides all K
blocks. With fixed_policy the ResNet alone learns under a heuristic (the Table 1 (ft) baselines).

    accelerate launch recipes/finetune.py --config recipes/configs/cifar10_resnet32_ft.yaml \
        --init-from outputs/cifar10_resnet32_cl [--output-dir D] [--epochs N] [--max-train-samples N] \
        [--max-eval-samples N] [--resume-from D|latest] [--data PATH_OR_HUB_ID] [--batch-size N] \
        [--set KEY=VALUE ...]

The same script runs on one CPU, on N CPU processes (``accelerate launch --multi_gpu --num_processes N``; it
asks Accelerate for CPU processes when there is no GPU) and on N GPUs. Outputs: see
timm_blockdrop/train/session.py.
"""
import sys

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from timm_blockdrop.models.policies import greedy, heuristic_policy
from timm_blockdrop.train.budget import block_budget
from timm_blockdrop.train.build import build_model, build_teacher, finetune_param_groups
from timm_blockdrop.train.config import recipe_main
from timm_blockdrop.train.reinforce import FinetuneRollout, distill_loss, policy_gradient_loss, rewards
from timm_blockdrop.train.session import accelerator_options, prepare


def eval_policy(model, config):
    """What finetuning evaluates: the greedy policy, or the fixed heuristic (RandomK drawn as blockdrop eval
    --seed draws it on one process)."""
    if not config.fixed_policy:
        return lambda images: greedy(model.policy_probs(images), model.threshold)
    generator = torch.Generator().manual_seed(config.seed)
    return lambda images: heuristic_policy(config.fixed_policy, images.shape[0], model.num_blocks,
                                           config.fixed_blocks, model.stage_sizes, generator,
                                           k_max=config.fixed_blocks_max).to(images.device)


def training_function(config, args):
    # routed blocks that no row keeps (and a fixed policy's dropped blocks) take no part in the loss: DDP must
    # then look for unused parameters
    unused = config.exec_mode == 'routed' or config.fixed_policy is not None
    accelerator = Accelerator(**accelerator_options(config, args.cpu, find_unused_parameters=unused))
    set_seed(config.seed)

    # The curriculum's model (policy + ResNet); with distill_weight > 0 the ResNet as finetuning starts (all
    # blocks, frozen) also teaches through its logits
    if not config.init_from and not config.fixed_policy:  # (a fixed policy trains the ResNet alone: no policy)
        accelerator.print('warning: no --init-from: finetuning a fresh policy (the paper starts from the curriculum)')
    model = build_model(config)
    teacher = build_teacher(config, model)
    # With budget_blocks the reward pays a price per block that dual ascent raises until the greedy policy keeps
    # that many blocks (beyond the paper: train/budget.py); the price is saved and resumed with the run
    budget = block_budget(config, model.num_blocks, accelerator)
    rollout = FinetuneRollout(model, config.exec_mode, teacher, config.fixed_policy, config.fixed_blocks,
                              config.fixed_blocks_max)

    # Policy network (at policy_lr) and ResNet (at lr) learn together
    optimizer = torch.optim.Adam(finetune_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    run = prepare(config, accelerator, rollout, optimizer, args.resume_from)
    run.start(eval_policy(model, config))

    for epoch in run.epochs():
        for batch in run.batches(epoch):
            labels = batch['label']
            with accelerator.accumulate(run.module):
                out = run.module(batch['pixel_values'], batch['seed'])  # u, u~, the ResNet's logits under both
                # R(u) (Eq. 3, minus the budget's price of u), A = R(u) - R(u~) (Eq. 6)
                r, correct, adv = rewards(out, labels, config.gamma, budget)
                # REINFORCE summed over the global batch (the reference's sum on any number of processes)
                pg_loss = policy_gradient_loss(out['probs'], out['keep'], adv, config.batch_size, config.beta,
                                               config.entropy)
                ce_loss = F.cross_entropy(out['logits'].float(), labels)
                losses = dict(pg_loss=pg_loss, ce_loss=ce_loss)
                if teacher is not None:  # + w T^2 KL(full ResNet || ResNet under u)
                    losses['kd_loss'] = distill_loss(out['logits'], out['teacher_logits'], config.distill_temperature)
                loss = pg_loss + ce_loss + config.distill_weight * losses.get('kd_loss', 0.0)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                if budget is not None:  # dual ascent on the price: up while the greedy policy is over budget
                    losses['budget_price'] = torch.tensor(budget.step(out['keep_greedy'], accelerator))
            run.record(out['keep'], correct, r, loss, **losses)
        run.end_epoch(epoch, run.evaluate(eval_policy(model, config)) if run.evaluates(epoch) else {})

    run.finish()


def main(argv=None):
    return recipe_main('finetune', __doc__, training_function, argv)


if __name__ == '__main__':
    sys.exit(main())
