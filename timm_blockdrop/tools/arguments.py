"""Where the tools write their reports (``--json``, ``--plot``): checked before the work starts, written at the end."""
import json
from pathlib import Path
from typing import Any, Optional

__all__ = ['check_output_file', 'write_json']


def check_output_file(path: Optional[str], flag: str) -> None:
    """Refuse, before any model runs, an output path that cannot be written as a file (one sentence)."""
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
