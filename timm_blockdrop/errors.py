"""Floor 0: the errors a user can cause, one list for every entry point (CLI, recipes, Hub, Python API).

An error in ``USER_ERRORS`` is printed as one sentence (``<prog>: error: ...``, exit status 2); anything else is a bug
and keeps its traceback. Errors from libraries are translated into these where they arise (a corrupt weight file
into ``CheckpointError``, a Hub repo that cannot be had into ``FileNotFoundError`` by ``hub_errors``), so no entry
point catches broad ``RuntimeError`` / ``TypeError`` and hides a bug.
"""
import contextlib
from typing import Iterator, Optional

from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
    RepositoryNotFoundError, RevisionNotFoundError)

__all__ = ['CheckpointError', 'UnsupportedModelError', 'HubError', 'USER_ERRORS', 'hub_errors', 'hub_upload_errors']


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used: corrupt, or made for another architecture."""


class UnsupportedModelError(TypeError):
    """The model given to ``wrap`` is not a ResNet-class model BlockDrop can gate."""


class HubError(OSError):
    """The Hugging Face Hub refused an upload or could not be reached for it (offline, no token, no rights)."""


USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, UnsupportedModelError, HubError)

# what huggingface_hub raises when a download cannot happen; all are translated by hub_errors
_DOWNLOAD_ERRORS = (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
                    OfflineModeIsEnabled, HfHubHTTPError)


def _why(e: Exception, repo: str, cache: str) -> str:
    if isinstance(e, GatedRepoError):
        return f'Hub repo {repo} is gated: accept its terms on huggingface.co and log in (hf auth login)'
    if isinstance(e, RepositoryNotFoundError):
        return f'Hub repo {repo} does not exist, or is private or gated and needs a login (hf auth login)'
    if isinstance(e, RevisionNotFoundError):
        return f'Hub repo {repo} has no such revision'
    if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
        return f'Hub repo {repo} holds no model.safetensors (nor pytorch_model.bin)'
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if hf_constants.HF_HUB_OFFLINE:
            return f'Hub repo {repo} is not in the local cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading it'
        return f'Hub repo {repo} is not in the local cache ({cache}) and the Hub could not be reached'
    first = str(e).strip().splitlines()[0] if str(e).strip() else 'no message'
    return f'the Hub refused repo {repo} ({type(e).__name__}: {first})'


@contextlib.contextmanager
def hub_errors(name: str, repo: Optional[str], note: Optional[str] = None,
               cache_dir: Optional[str] = None) -> Iterator[None]:
    """Turn huggingface_hub's download errors for ``name``'s weights in Hub ``repo`` into one FileNotFoundError.

    The one place Hub download errors are translated (used by every entry of this package and by ``load_model``
    for any timm name or ``hf-hub:`` id): not cached while offline, unreachable, not found, gated, no weights.
    ``note`` is a sentence added after the reason (e.g. where a not-yet-published release lives).
    """
    try:
        yield
    except _DOWNLOAD_ERRORS as e:
        if not repo:
            raise
        why = _why(e, repo, cache_dir or hf_constants.HF_HUB_CACHE)
        raise FileNotFoundError(
            f'no weights for {name}: {why}. ' + (f'{note[0].upper()}{note[1:]}. ' if note else '')
            + f'Download it where the Hub is reachable with `hf download {repo}` (into the HF cache that '
            f"pretrained=True reads), load a downloaded or published folder with "
            f"timm.create_model('local-dir:PATH', pretrained=True) (blockdrop: --checkpoint PATH), or give a weight "
            f'file with pretrained_cfg_overlay=dict(file=PATH) (blockdrop: --pretrained-file PATH)'
        ) from None


@contextlib.contextmanager
def hub_upload_errors(repo: str) -> Iterator[None]:
    """Turn an upload's errors (offline, no token, no rights: all OSError in huggingface_hub) into ``HubError``."""
    try:
        yield
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f'upload to {repo} failed: {first} (log in with `hf auth login` or set HF_TOKEN; '
                       f'--dry-run FOLDER writes the repo folder without uploading)') from None
