"""kcloud's one error model: every refusal a client can be told about is a `KcloudError`.

Each error carries what its HTTP answer needs (the status, extra headers, extra body fields), so
that the gateway can translate any of them in one place (`kcloud.serving.gateway.errors`) and no
package keeps its own translator. The generic kinds below are shared: a deployment, a tenant and
a model that do not exist are all a `NotFoundError`, so a caller catches one class whichever
package refused. A package adds a subclass only where it has something of its own to say
(a quota's numbers, a queue's Retry-After).

This module is the bottom of the import graph: it imports nothing of kcloud, so every package,
the lowest included, can raise these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "InvalidRequestError",
    "KcloudError",
    "NotFoundError",
    "UnprocessableError",
]


class KcloudError(Exception):
    """A failure with the HTTP status it is answered with.

    `status` is a class attribute so that a kind means one status everywhere; `status=` on one
    instance is for wrapping a framework's refusal whose status is only known at run time.
    `headers` travel with the answer (e.g. `retry-after`); `fields` are added to the JSON body
    beside `"error"` (e.g. a quota's limit and numbers), for clients that act on them.
    """

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.fields: dict[str, Any] = dict(fields or {})

    @property
    def message(self) -> str:
        """The sentence for the user: the message given, never a repr (`str(KeyError)` quotes it)."""
        if self.args and isinstance(self.args[0], str) and self.args[0]:
            return self.args[0]
        return str(self) or type(self).__name__


class InvalidRequestError(KcloudError):
    """The request itself is malformed or contradicts itself (400)."""

    status = 400


class ForbiddenError(KcloudError):
    """The caller is known and sees the thing, but may not do this to it (403)."""

    status = 403


class NotFoundError(KcloudError):
    """No such thing; also what a caller gets for something that exists but is not theirs (404)."""

    status = 404


class ConflictError(KcloudError):
    """The request clashes with what exists (a name taken) (409)."""

    status = 409


class UnprocessableError(KcloudError):
    """Well-formed, but no farm could ever satisfy it (an unknown chip in the constraints) (422)."""

    status = 422
