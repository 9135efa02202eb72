"""What a run trains: the model its config names (through ``models.loading.load_model``), the optional
starting points of the policy network, and the optimizer's parameter groups."""
import copy
import math
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..errors import CheckpointError
from ..models.blockdrop import wrap
from ..models.loading import load_model
from .checkpointing import MODEL_DIR
from .config import TrainConfig

__all__ = ['build_model', 'build_teacher', 'base_weights_note', 'init_model_folder', 'init_policy_keep',
           'init_policy_from_base', 'finetune_param_groups']


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
        model = load_model(checkpoint=str(init_model_folder(config.init_from)), require='blockdrop')
        base_arch = model._model_args['base_model']
        if base_arch != config.model.split('.')[0]:  # (config.model may carry a pretrained tag)
            raise CheckpointError(f"--init-from {config.init_from} is BlockDrop on '{base_arch}', but the config's "
                                  f"model is '{config.model}'")
        model.threshold = config.threshold
        model.alpha = config.alpha
        model._model_args['alpha'] = config.alpha
        return model
    try:
        base = load_model(config.model, pretrained_file=config.pretrained_file, pretrained=config.base_pretrained,
                          require='wrappable', **config.model_kwargs)
    except FileNotFoundError as e:  # the base's tag neither cached nor downloadable: the recipe's ways around it
        if config.pretrained_file or not config.base_pretrained:
            raise
        raise FileNotFoundError(f'{e}; in a recipe: --set pretrained_file=PATH for a local weight file, or '
                                f'--set base_pretrained=false for random base weights') from None
    policy_img_size = 'auto' if config.policy_img_size is None else config.policy_img_size
    model = wrap(base, policy_model=config.policy_model, policy_img_size=policy_img_size, threshold=config.threshold,
                 alpha=config.alpha)
    # what the base started from, in the saved config.json and so on the model card ('base: ' note, tools/hub.py)
    model.pretrained_cfg = dict(model.pretrained_cfg,
                                notes=[*(model.pretrained_cfg.get('notes') or ()), base_weights_note(config, base)])
    return model


def base_weights_note(config: TrainConfig, base) -> str:
    """'base: ...' naming the weights the base ResNet started from (a file, a timm pretrained tag, or none)."""
    if config.pretrained_file:
        return f'base: started from the weight file {Path(config.pretrained_file).name}'
    if not config.base_pretrained:
        return 'base: started from random weights (base_pretrained: false)'
    cfg = base.pretrained_cfg
    tag = f"{cfg.get('architecture')}.{cfg['tag']}" if cfg.get('tag') else cfg.get('architecture')
    return f"base: started from timm's pretrained {tag}" + (f" (hf-hub: {cfg['hf_hub_id']})" if cfg.get('hf_hub_id')
                                                          else '')


def build_teacher(config: TrainConfig, model):
    """The frozen network whose logits finetuning distils (``distill_weight`` > 0), or None.

    ``teacher_model`` (e.g. a deeper cifar_resnet56 with ``teacher_file``) or, by default, a copy of the ResNet as
    finetuning starts, all blocks. It must predict the same classes as the model.
    """
    if not config.distill_weight:
        return None
    if config.teacher_model is None:
        teacher = copy.deepcopy(model.base)
    else:
        teacher = load_model(config.teacher_model, pretrained_file=config.teacher_file, require='wrappable')
        if teacher.num_classes != model.num_classes:
            raise ValueError(f"config key 'teacher_model' ({config.teacher_model}) predicts {teacher.num_classes} "
                             f"classes, the model {model.num_classes}: name a teacher trained on the same classes")
    return teacher  # (FinetuneRollout freezes it and keeps it in eval mode)


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
