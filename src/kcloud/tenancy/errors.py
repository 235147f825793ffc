"""Tenancy's own refusals: a quota crossed, and a token quota used up. Its other refusals are the
shared kinds of `kcloud.errors` (`InvalidRequestError`, `NotFoundError`, `ForbiddenError`,
`ConflictError`)."""

from __future__ import annotations

from typing import Literal

from kcloud.errors import ForbiddenError, KcloudError

__all__ = ["QuotaExceededError", "TokenQuotaError"]


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


class TokenQuotaError(KcloudError):
    """A key or its tenant has used its tokens of the current window (429, `Retry-After`).

    A 429 rather than the 403 of `QuotaExceededError`: the request is fine and will be served once
    the window frees, which `Retry-After` says (whole seconds). Body fields beside `"error"`:
    `limit` (`tokens_per_minute` or `tokens_per_day`), `scope` (`key` or `tenant`), `allowed`,
    `used` and `retry_after_s`, for clients that act on them (OpenAI SDKs read the header).
    """

    status = 429

    def __init__(
        self,
        reason: str,
        *,
        limit: Literal["tokens_per_minute", "tokens_per_day"],
        scope: Literal["key", "tenant"],
        allowed: int,
        used: int,
        retry_after_s: int,
    ) -> None:
        super().__init__(
            reason,
            headers={"retry-after": str(retry_after_s)},
            fields={"limit": limit, "scope": scope, "allowed": allowed, "used": used,
                    "retry_after_s": retry_after_s},
        )
        self.limit = limit
        self.scope = scope
        self.allowed = allowed
        self.used = used
        self.retry_after_s = retry_after_s
