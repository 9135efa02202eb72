"""BlockDrop stage 1: curriculum learning of the policy network on a frozen pretrained ResNet.

Paper Sec. 3.3 and Alg. 1 lines 3-13. At epoch t the first K - t * cl_step blocks always run and the policy
learns to keep or drop the others, with REINFORCE: reward 1 - (|u|/K)^2 if correct, else -gamma (Eq. 3),
self-critical baseline (the greedy policy), alpha-bounded sampling, entropy bonus beta.

    accelerate launch recipes/curriculum.py --config recipes/configs/cifar10_resnet32_cl.yaml \
        [--output-dir D] [--epochs N] [--max-train-samples N] [--max-eval-samples N] \
        [--resume-from D|latest] [--data PATH_OR_HUB_ID] [--batch-size N] [--set KEY=VALUE ...]

The same script runs on one CPU, on N CPU processes (``accelerate launch --multi_gpu --num_processes N``; it
asks Accelerate for CPU processes when there is no GPU) and on N GPUs. Outputs: see
timm_blockdrop/train/session.py.
"""
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from timm_blockdrop.models.policies import greedy
from timm_blockdrop.train.budget import block_budget
from timm_blockdrop.train.build import build_model, init_policy_from_base, init_policy_keep
from timm_blockdrop.train.config import recipe_main
from timm_blockdrop.train.curriculum import force_prefix, num_forced
from timm_blockdrop.train.reinforce import CurriculumRollout, curriculum_loss, rewards
from timm_blockdrop.train.session import accelerator_options, prepare


def greedy_policy(model, n_forced):
    """What the curriculum evaluates: the greedy policy with the stage's first n_forced blocks on."""
    return lambda images: force_prefix(greedy(model.policy_probs(images), model.threshold), n_forced)


def training_function(config, args):
    accelerator = Accelerator(**accelerator_options(config, args.cpu))
    set_seed(config.seed)

    # The pretrained ResNet (frozen) with a fresh policy network, optionally started from the base or near keep-all
    model = build_model(config)
    if config.policy_init_from_base:
        accelerator.print(f'policy network: {len(init_policy_from_base(model))} tensors copied from the base ResNet')
    if config.policy_init_keep is not None:
        init_policy_keep(model, config.policy_init_keep)
    num_blocks = model.num_blocks
    # With budget_blocks the reward pays a price per block that dual ascent raises until the greedy policy keeps
    # that many blocks (beyond the paper: train/budget.py); the price is saved and resumed with the run
    budget = block_budget(config, num_blocks, accelerator)

    # Only the policy network learns; prepare() shares data, DDP, schedule, resume and logs with finetune.py
    optimizer = torch.optim.Adam(model.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = prepare(config, accelerator, CurriculumRollout(model), optimizer, args.resume_from)
    run.start(greedy_policy(model, num_forced(0, num_blocks, config.cl_step)))

    for epoch in run.epochs():
        n_forced = num_forced(epoch, num_blocks, config.cl_step)  # the curriculum: blocks the policy cannot drop
        for batch in run.batches(epoch, f' (policy on the last {num_blocks - n_forced}/{num_blocks})'):
            labels = batch['label']
            with accelerator.accumulate(run.module):
                out = run.module(batch['pixel_values'], batch['seed'], n_forced)  # u, u~ and the ResNet under both
                # R(u) (Eq. 3, minus the budget's price of u), A = R(u) - R(u~) (Eq. 6)
                r, correct, adv = rewards(out, labels, config.gamma, budget)
                # REINFORCE on the decided blocks minus beta x entropy, / batch (Eq. 5, the reference's form)
                loss = curriculum_loss(out['probs'], out['keep'], adv, n_forced, config.beta, config.entropy)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                extra = {}
                if budget is not None and n_forced <= budget.target * num_blocks:  # (reachable at this stage)
                    # dual ascent on the price: up while the greedy policy is over budget
                    extra['budget_price'] = torch.tensor(budget.step(out['keep_greedy'], accelerator))
            run.record(out['keep'], correct, r, loss, **extra)
        val = run.evaluate(greedy_policy(model, n_forced)) if run.evaluates(epoch) else {}
        run.end_epoch(epoch, val, decided_blocks=num_blocks - n_forced)

    run.finish()


def main(argv=None):
    return recipe_main('curriculum', __doc__, training_function, argv)


if __name__ == '__main__':
    sys.exit(main())
