"""One writer per output folder (issue 13): a lock file holding the training process's PID, and a training
process that ends when its launcher does.

``OutputLock`` is taken by the main process before a run writes anything; a second run on the same folder is
refused with a sentence naming the PID that holds it; a lock whose PID is dead (a run killed with -9) is taken
over with a warning. ``exit_with_parent`` asks Linux to send SIGTERM to this process when its parent dies, so
killing ``accelerate launch`` does not leave a training child that keeps writing.
"""
import atexit
import ctypes
import os
import signal
import sys
import warnings
from pathlib import Path

__all__ = ['LOCK_FILE', 'OutputLock', 'exit_with_parent']

LOCK_FILE = '.lock'
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class OutputLock:
    """``output_dir/.lock`` created exclusively with this process's PID; released by ``release`` or at exit."""

    def __init__(self, output_dir):
        self.path = Path(output_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> 'OutputLock':
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text = self.path.read_text().strip() if self.path.is_file() else ''
                pid = int(text) if text.isdigit() else None
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise ValueError(f'{self.path.parent} is in use by another run (process {pid}, see {self.path}): '
                                     f'wait for it, stop it, or choose another --output-dir') from None
                warnings.warn(f'{self.path}: taking over the lock of process {text or "?"}, which is not running')
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(str(os.getpid()))
            self.held = True
            atexit.register(self.release)
            return self
        raise ValueError(f'{self.path}: could not take the lock (another run took it at the same time?)')

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            except FileNotFoundError:
                pass


def exit_with_parent() -> None:
    """SIGTERM this process when its parent (``accelerate launch``, torchrun's agent) dies; Linux only."""
    if not sys.platform.startswith('linux'):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
