"""The project's own error types: problems a user can fix, reported in one line.

The CLI turns any :class:`UnisupError` into ``unisup: error: <message>`` and exit
status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnisupError(Exception):
    """Bad input, a bad setting or a refused operation, explained in the message."""


class InputError(UnisupError, ValueError):
    """An input file or artifact is malformed, inconsistent or of the wrong kind."""


class ArtifactMismatch(InputError):
    """Artifacts that must belong together (model, index, catalog, evaluation) do not."""


class ServingError(UnisupError, RuntimeError):
    """A model server that a stage needs could not be started or did not get ready."""
