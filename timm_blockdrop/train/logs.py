"""The JSON-lines logs of a run (metrics.jsonl per epoch, steps.jsonl per logged step)."""
import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = ['JsonLines']


class JsonLines:
    """An append-only JSON-lines log written by the main process."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open('a') as f:
                f.write(json.dumps(record) + '\n')

    def rewrite(self, records: List[Dict[str, Any]]) -> None:
        if self.enabled:
            self.path.write_text(''.join(json.dumps(r) + '\n' for r in records))

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, keep) -> None:
        """Drop the records for which ``keep(record)`` is false (a resumed run rewrites what it redoes)."""
        if self.enabled:
            self.rewrite([r for r in self.read() if keep(r)])
