"""The one way from what a user names (a timm name, a weight file, a checkpoint folder) to a model.

Used by the CLI (eval, bench, compare, publish), the recipes, the training benchmark and the Hub code. Everything
goes through timm's own machinery: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
for weight files, ``local-dir:`` for ``save_for_hf`` folders, ``hf-hub:`` for Hub repos. The checks before it turn
each way this can go wrong into one clear sentence (``timm_blockdrop.errors.USER_ERRORS``), before any weight is read.
"""
from typing import Optional

import timm
import torch
from torch import nn

from ..errors import CheckpointError, UnsupportedModelError, hub_errors
from .blockdrop import GENERIC_ENTRY, SUPPORTED_BASES, BlockDropResNet, wrap
from .checkpoints import checkpoint_weights_file, read_hf_config

__all__ = ['load_model', 'as_blockdrop', 'REQUIRE']

# what a caller may require of the model: any timm model, one wrap() can gate (or a BlockDrop model), a BlockDrop model
REQUIRE = (None, 'wrappable', 'blockdrop')


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None, pretrained_file: Optional[str] = None,
               *, pretrained: bool = True, require: Optional[str] = None, **kwargs) -> nn.Module:
    """A timm model from a checkpoint folder, a weight file for ``model``, or ``model``'s pretrained tag.

    Args:
        model: a timm name (``cifar_resnet32``, ``blockdrop_cifar_resnet32.cifar10``), ``local-dir:FOLDER`` or
            ``hf-hub:ORG/NAME``.
        checkpoint: a ``save_for_hf`` folder (model.safetensors + config.json); ``model``, if given, must match it.
        pretrained_file: a weight file for ``model``.
        pretrained: ``False`` builds ``model`` with fresh weights (no file, no download).
        require: ``'wrappable'``: a BlockDrop model or a base ``wrap()`` can gate; ``'blockdrop'``: a BlockDrop model.
            Checked from the architecture before any weights are read or downloaded.
        kwargs: passed to ``timm.create_model`` (e.g. ``shortcut='B'``).
    """
    if require not in REQUIRE:
        raise ValueError(f"require must be one of {REQUIRE}, got {require!r}")
    if checkpoint:
        if pretrained_file:
            raise ValueError('give either --checkpoint (a save_for_hf folder) or --pretrained-file, not both')
        cfg = read_hf_config(checkpoint)
        checkpoint_weights_file(checkpoint)
        arch = cfg['architecture']
        if not timm.is_model(arch):
            raise CheckpointError(f"checkpoint {checkpoint} is for architecture '{arch}', which is not a registered "
                                  f"timm model (BlockDrop models are blockdrop_*; did you import timm_blockdrop?)")
        if model and model.split('.')[0] != arch:
            raise CheckpointError(f"checkpoint {checkpoint} holds a '{arch}', not a '{model}'")
        _check_required(arch, require, f'checkpoint {checkpoint}', cfg.get('model_args'))
        return timm.create_model(f'local-dir:{checkpoint}', pretrained=True, **kwargs)
    if not model:
        raise ValueError('name a model (--model) or a checkpoint folder (--checkpoint)')
    if model.startswith('local-dir:'):
        if pretrained_file:
            raise ValueError(f'--pretrained-file cannot be combined with {model}: the weights come from there')
        return load_model(checkpoint=model[len('local-dir:'):], require=require, **kwargs)
    if model.startswith('hf-hub:'):
        if pretrained_file:
            raise ValueError(f'--pretrained-file cannot be combined with {model}: the weights come from there')
        repo = model[len('hf-hub:'):]
        with hub_errors(model, repo):
            loaded = timm.create_model(model, pretrained=pretrained, **kwargs)
        # the architecture is known only once config.json is read
        _check_required(loaded.pretrained_cfg.get('architecture') or '', require, model, model=loaded)
        return loaded
    arch = model.split('.')[0]
    if not timm.is_model(arch):
        raise ValueError(f"unknown model '{model}': not a registered timm model")
    _check_required(arch, require, f"'{model}'", kwargs)
    if pretrained_file:
        return timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file), **kwargs)
    if not pretrained:
        return timm.create_model(model, **kwargs)
    cfg = timm.models.get_pretrained_cfg(model)
    with hub_errors(model, cfg.hf_hub_id if cfg is not None else None):
        return timm.create_model(model, pretrained=True, **kwargs)


def _check_required(arch: str, require: Optional[str], what: str, model_args: Optional[dict] = None,
                    model: Optional[nn.Module] = None) -> None:
    """Check ``require`` for ``arch``: from ``model`` if built, else from a weightless copy on the meta device."""
    if require is None or arch == GENERIC_ENTRY or arch.startswith('blockdrop_') or isinstance(model, BlockDropResNet):
        return
    if require == 'blockdrop':
        raise CheckpointError(
            f"{what} holds a '{arch}', not a BlockDrop model (blockdrop*): wrap a ResNet with "
            f"timm_blockdrop.wrap(model) and save that with timm.models.save_for_hf(model, DIR, "
            f"safe_serialization=True)")
    if model is None:
        args = {k: v for k, v in (model_args or {}).items() if k not in ('pretrained_cfg', 'pretrained_cfg_overlay')}
        with torch.device('meta'):  # the architecture alone: no memory, no weights read or downloaded
            model = timm.create_model(arch, pretrained=False, **args)
    if not isinstance(model, SUPPORTED_BASES):
        raise UnsupportedModelError(
            f"{what} is a {type(model).__name__} ('{arch}'), which BlockDrop cannot gate: it wraps ResNet-class "
            f"models with residual stages layer1..layerN ({', '.join(c.__name__ for c in SUPPORTED_BASES)}: "
            f"resnet*, resnext*, seresnet*, wide_resnet*, cifar_resnet*, ...)")


def as_blockdrop(model: nn.Module) -> BlockDropResNet:
    """A BlockDrop model as it is, or a plain ResNet wrapped so it evaluates with every/heuristic blocks."""
    return model if isinstance(model, BlockDropResNet) else wrap(model)
