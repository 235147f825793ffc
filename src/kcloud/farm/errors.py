"""The control plane's refusals, each with the HTTP status it is answered with."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """A request the control plane refuses; `status` is the HTTP status to answer with."""

    status = 400


class NotFoundError(ControlPlaneError):
    status = 404


class UnknownModelError(ControlPlaneError):
    status = 404


class ConflictError(ControlPlaneError):
    status = 409


class BadNameError(ControlPlaneError):
    """A deployment name outside the caller's name space (`kcloud.farm.names`)."""

    status = 400


class InvalidSpecError(ControlPlaneError):
    """Constraints that no farm could ever satisfy (unknown chip, a chip of another vendor)."""

    status = 422
