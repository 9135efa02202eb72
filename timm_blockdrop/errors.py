"""Floor 0: the errors a user can cause, one list for every entry point (CLI, recipes, Hub, Python API).

An error in ``USER_ERRORS`` is printed as one sentence (``<prog>: error: ...``, exit status 2); anything else is a bug
and keeps its traceback.
"""

__all__ = ['CheckpointError', 'UnsupportedModelError', 'USER_ERRORS']


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used: corrupt, or made for another architecture."""


class UnsupportedModelError(TypeError):
    """The model given to ``wrap`` is not a ResNet-class model BlockDrop can gate."""


USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, UnsupportedModelError)
