"""The control plane's refusals.

A deployment or device that does not exist and a name already taken are the shared
`kcloud.errors.NotFoundError` and `ConflictError` (named here too, since the farm raises them);
the kinds below are the farm's own rules. Each also subclasses `ControlPlaneError`, so that code
resolving bundled models can tell a refusal of the farm's rules from any other failure.
"""

from __future__ import annotations

from kcloud.errors import (
    ConflictError,
    InvalidRequestError,
    KcloudError,
    NotFoundError,
    UnprocessableError,
)

__all__ = [
    "BadNameError",
    "ConflictError",
    "ControlPlaneError",
    "InvalidSpecError",
    "NotFoundError",
    "UnknownModelError",
]


class ControlPlaneError(KcloudError):
    """A request the control plane refuses by its own rules; a subclass names its status."""

    status = 400


# The shared kind comes first in each base list, so that its status is the one looked up.


class UnknownModelError(NotFoundError, ControlPlaneError):
    """The deployment names a model (or version) the repository does not hold (404)."""


class BadNameError(InvalidRequestError, ControlPlaneError):
    """A deployment name outside the caller's name space (`kcloud.farm.names`) (400)."""


class InvalidSpecError(UnprocessableError, ControlPlaneError):
    """Constraints that no farm could ever satisfy (unknown chip, a chip of another vendor) (422)."""
