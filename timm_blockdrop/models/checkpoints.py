"""Checkpoint files: clear errors for missing, corrupt or mismatched weights.

timm loads weight files deep inside ``build_model_with_cfg``; a missing file there raises an empty
``FileNotFoundError`` and a wrong architecture a long ``load_state_dict`` trace. The helpers here
check what timm is about to load and say in one sentence what is wrong.
"""
import contextlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Optional

import torch
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from torch import nn

from ..errors import CheckpointError, hub_errors
from .pretrained_cfgs import release_status

__all__ = [
    'CheckpointError', 'check_state_dict_fits', 'translate_load_errors', 'read_hf_config', 'checkpoint_weights_file',
    'build_with_clear_errors',
]

# checkpoint keys that older PyTorch versions did not write; BatchNorm fills them in on load
_OPTIONAL_SUFFIXES = ('num_batches_tracked',)
_MAX_LISTED = 8


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f' (+{len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else ''
    return ', '.join(keys[:_MAX_LISTED]) + more


def check_state_dict_fits(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        source: str,
        skip_prefixes: tuple = (),
) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected and mis-shaped keys, if any.

    ``skip_prefixes`` are key prefixes whose shapes may legitimately differ (a classifier that timm will
    drop because ``num_classes`` changed).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f'{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}'
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape) and not k.startswith(skip_prefixes)
    ]
    if not (missing or unexpected or mismatched):
        return
    arch = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    problems = []
    if missing:
        problems.append(f'missing keys: {_listing(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {_listing(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatch (checkpoint vs model): {_listing(mismatched)}')
    raise CheckpointError(
        f"checkpoint {source} does not fit architecture '{arch}': " + '; '.join(problems)
    )


@contextlib.contextmanager
def translate_load_errors(source: Optional[str]) -> Iterator[None]:
    """Turn the low-level errors of reading a weight file into ``CheckpointError`` / ``FileNotFoundError``."""
    try:
        yield
    except FileNotFoundError as e:
        if e.args:
            raise
        raise FileNotFoundError(f'checkpoint file not found: {source}') from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f'checkpoint {source} is corrupt or not a PyTorch checkpoint: {e}') from None
    except RuntimeError as e:
        msg = str(e)
        if isinstance(e, CheckpointError):
            raise
        if 'PytorchStreamReader' in msg or 'invalid load key' in msg or 'zip archive' in msg:
            raise CheckpointError(f'checkpoint {source} is corrupt or not a PyTorch checkpoint: {msg}') from None
        if 'weights_only' in msg:
            raise CheckpointError(f'checkpoint {source} is corrupt or not a plain weights file (loading with '
                                  f'weights_only=True refused it): {msg.splitlines()[0]}') from None
        raise
    except Exception as e:  # safetensors raises its own error type (SafetensorError)
        if type(e).__name__ == 'SafetensorError':
            raise CheckpointError(f'checkpoint {source} is corrupt or not a safetensors file: {e}') from None
        raise


def read_hf_config(folder: str) -> dict:
    """Read ``config.json`` of a checkpoint folder in timm's ``save_for_hf`` layout, with clear errors."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint folder not found: {folder}')
    cfg_file = path / 'config.json'
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f'checkpoint folder {folder} has no config.json: expected the layout of '
            f'timm.models.save_for_hf (model.safetensors + config.json)'
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{cfg_file} is not valid JSON: {e}') from None
    if not isinstance(cfg, dict) or 'architecture' not in cfg:
        raise CheckpointError(f'{cfg_file} names no architecture: not a timm config.json')
    return cfg


def checkpoint_weights_file(folder: str) -> Path:
    """The weight file of a ``save_for_hf`` folder (safetensors preferred), or a clear error."""
    path = Path(folder)
    for name in ('model.safetensors', 'pytorch_model.bin'):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f'checkpoint folder {folder} has no model.safetensors (nor pytorch_model.bin)')


def build_with_clear_errors(model_cls, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.models.build_model_with_cfg`` with the weight source checked first and load errors named.

    Used by every entry of this package, so ``timm.create_model(..., pretrained=True)`` on a missing or
    corrupt file says which file and what is wrong instead of a trace from inside torch, and on a Hub repo
    that cannot be had (not cached offline, unreachable, not published) which repo and how to get it.
    """
    source = hub_repo = None
    name = variant
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        name = f'{variant}.{cfg.tag}' if cfg.tag else variant
        if cfg.source == 'local-dir':
            source = cfg.file
            checkpoint_weights_file(cfg.file)
        elif cfg.file:
            source = cfg.file
            if not Path(cfg.file).is_file():
                raise FileNotFoundError(f'pretrained weight file not found: {cfg.file} (for {variant})')
        else:
            source = cfg.hf_hub_id or cfg.url or None
            hub_repo = cfg.hf_hub_id if cfg.source == 'hf-hub' or not cfg.state_dict else None
            if source is None and cfg.state_dict is None:
                raise FileNotFoundError(
                    f'no pretrained weights for {name}: its pretrained tag names no weight source. Give a file with '
                    f"pretrained_cfg_overlay=dict(file=PATH) (blockdrop eval: --pretrained-file), or use "
                    f'pretrained=False for random initialisation')
    with hub_errors(name, hub_repo, release_status(name), kwargs.get('cache_dir')), translate_load_errors(source):
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
