"""What the tools' command lines name, checked before any model runs (counts, output files), and the JSON they write.

A value that cannot work is refused in one sentence at the start, not after a whole evaluation, and never replaced
silently by a default.
"""
import json
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ['check_positive', 'check_device', 'check_output_file', 'write_json']


def check_positive(**flags: Optional[int]) -> None:
    """Refuse a count below 1: ``check_positive(batch_size=..., max_samples=...)`` names ``--batch-size`` etc.

    ``None`` means "not given" and passes.
    """
    for name, value in flags.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def check_device(device: str) -> None:
    """Refuse a ``--device`` torch cannot parse or this machine does not have (instead of a torch traceback)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: this machine (or this PyTorch build) has no CUDA device; use --device cpu')


def check_output_file(path: Optional[str], flag: str) -> None:
    """Refuse an output path that cannot be written as a file (a folder, or below a file), in one sentence."""
    if not path:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f'{flag} {path} is a folder: name a file to write the report to')
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f'{flag} {path}: {parent} is a file, not a folder')


def write_json(path: str, report: Any) -> None:
    """``report`` as indented JSON at ``path`` (its folder made if needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + '\n')
