"""Tenancy's refusals, each with the HTTP status it is answered with and a sentence for the user."""

from __future__ import annotations


class TenancyError(Exception):
    status: int = 400


class InvalidRequestError(TenancyError):
    status = 400


class NotFoundError(TenancyError):
    """Also what a principal gets for something that exists but is not theirs to see."""

    status = 404


class ForbiddenError(TenancyError):
    """The principal sees the thing but its role may not do this to it."""

    status = 403


class ConflictError(TenancyError):
    status = 409


class QuotaExceededError(TenancyError):
    """A deployment change would take the tenant over its quota (403, with the limit crossed)."""

    status = 403

    def __init__(self, reason: str, *, limit: str, allowed: float, requested: float) -> None:
        super().__init__(reason)
        self.limit = limit
        self.allowed = allowed
        self.requested = requested
