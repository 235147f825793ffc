"""Errors of the model repository, kept apart so that callers can catch them without importing
the repository (and its ONNX dependencies)."""

from __future__ import annotations

from kcloud.errors import NotFoundError


class ModelNotFoundError(NotFoundError, LookupError):
    """No model (or no such version of it) in the repository: a client asked for it, so 404.

    Still a `LookupError`, for callers that treat the repository as a mapping.
    """


class ModelFileError(ValueError):
    """A model file or config is unusable; the message names the file and what is wrong."""


class BuildError(RuntimeError):
    """A built-in model could not be built (its source package is missing, a check failed)."""
