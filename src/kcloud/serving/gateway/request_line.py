"""One check on every request's path and query string, before anything else reads them.

A NUL character (`%00`) in a path or query parameter is a value no route can use: PostgreSQL's text
cannot hold one, so a tenant name or an audit filter with `%00` used to end as a database error
(500) on PostgreSQL and as a plain miss on SQLite. Refusing it once here answers every route alike,
present and future, with a 400 naming the problem, on both databases; and since this is the
outermost layer, nothing (authentication, the audit log) ever sees such a path.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from kcloud.errors import InvalidRequestError
from kcloud.serving.gateway.errors import send_error

_NUL_ESCAPED = b"%00"
#: Scope key of `time.perf_counter()` when the request reached the gateway's application, before
#: any middleware (the LLM routes measure the gateway's own part of a first token from it).
ARRIVED = "kcloud.arrived"


def request_line_problem(scope: Scope) -> str | None:
    """Why the request's path or query string cannot be served, or None when it can."""
    if "\x00" in scope["path"]:
        return "the request path contains a NUL character (%00); no name in a path may contain one"
    query: bytes = scope.get("query_string", b"")
    if _NUL_ESCAPED in query or b"\x00" in query:
        return "the query string contains a NUL character (%00); no parameter may contain one"
    return None


class RequestLineGuard:
    """Answers 400 to a request whose path or query string holds NUL; passes the rest on, stamped
    with the time it arrived (`ARRIVED`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.perf_counter()
            problem = request_line_problem(scope)
            if problem is not None:
                await send_error(send, scope["path"], InvalidRequestError(problem))
                return
        await self.app(scope, receive, send)
