"""Turn what a user names on the command line (a timm name, a weight file, a checkpoint folder) into a model.

Everything goes through timm's own machinery: ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` for weight files, ``local-dir:`` for ``save_for_hf`` folders. The
checks before it turn each way this can go wrong into one clear sentence.
"""
from typing import Optional

import timm
from torch import nn

from .checkpoints import CheckpointError, checkpoint_weights_file, read_hf_config
from .blockdrop import BlockDropResNet, wrap

__all__ = ['load_model', 'as_blockdrop']


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None,
               pretrained_file: Optional[str] = None) -> nn.Module:
    """A timm model from a checkpoint folder, a weight file for ``model``, or ``model``'s pretrained tag."""
    if checkpoint:
        if pretrained_file:
            raise ValueError('give either --checkpoint (a save_for_hf folder) or --pretrained-file, not both')
        cfg = read_hf_config(checkpoint)
        checkpoint_weights_file(checkpoint)
        arch = cfg['architecture']
        if not timm.is_model(arch):
            raise CheckpointError(f"checkpoint {checkpoint} is for architecture '{arch}', which is not a registered "
                                  f"timm model (BlockDrop models are blockdrop_*; did you import timm_blockdrop?)")
        if model and model != arch:
            raise CheckpointError(f"checkpoint {checkpoint} holds a '{arch}', not a '{model}'")
        return timm.create_model(f'local-dir:{checkpoint}', pretrained=True)
    if not model:
        raise ValueError('name a model (--model) or a checkpoint folder (--checkpoint)')
    if model.startswith(('hf-hub:', 'local-dir:')):
        if pretrained_file:
            raise ValueError(f'--pretrained-file cannot be combined with {model}: the weights come from there')
        if model.startswith('local-dir:'):
            return load_model(checkpoint=model[len('local-dir:'):])
        return _pretrained(model)
    if not timm.is_model(model.split('.')[0]):
        raise ValueError(f"unknown model '{model}': not a registered timm model")
    if pretrained_file:
        return timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file))
    return _pretrained(model)


def _pretrained(model: str) -> nn.Module:
    """``timm.create_model(model, pretrained=True)``; a Hub download that cannot happen names the repo."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    try:
        return timm.create_model(model, pretrained=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError) as e:
        if model.startswith('hf-hub:'):
            repo = model[len('hf-hub:'):]
        else:
            repo = timm.models.get_pretrained_cfg(model).hf_hub_id or model
        offline = ' (HF_HUB_OFFLINE=1 forbids downloading it)' if constants.HF_HUB_OFFLINE else ''
        raise FileNotFoundError(
            f'cannot load the weights of {model}: Hub repo {repo} is not in the local cache{offline} or not '
            f'reachable ({type(e).__name__}). Download it where the Hub is reachable with `hf download {repo}`, '
            f'or give local weights with --pretrained-file or --checkpoint') from None


def as_blockdrop(model: nn.Module) -> BlockDropResNet:
    """A BlockDrop model as it is, or a plain ResNet wrapped so it evaluates with every/heuristic blocks."""
    return model if isinstance(model, BlockDropResNet) else wrap(model)
