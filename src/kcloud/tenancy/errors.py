"""Tenancy's own refusal: a quota crossed. Its other refusals are the shared kinds of
`kcloud.errors` (`InvalidRequestError`, `NotFoundError`, `ForbiddenError`, `ConflictError`)."""

from __future__ import annotations

from kcloud.errors import ForbiddenError

__all__ = ["QuotaExceededError"]


class QuotaExceededError(ForbiddenError):
    """A deployment change would take the tenant over its quota (403).

    The answer names the limit crossed and its numbers as body fields beside `"error"`
    (`limit`, `allowed`, `requested`), so a client can act on them without parsing the sentence.
    """

    def __init__(self, reason: str, *, limit: str, allowed: float, requested: float) -> None:
        super().__init__(reason, fields={"limit": limit, "allowed": allowed, "requested": requested})
        self.limit = limit
        self.allowed = allowed
        self.requested = requested
