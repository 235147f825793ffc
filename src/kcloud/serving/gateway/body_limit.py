"""A cap on request bodies, enforced before the body is read and again while it streams.

Checking `Content-Length` first answers 413 without reading a byte; wrapping `receive` catches a
chunked body (no length) that grows past the cap, so no client can make the server buffer an
unbounded body. Pure ASGI, so every route (and routers added later) is covered.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kcloud.errors import InvalidRequestError
from kcloud.serving.gateway.errors import BodyTooLargeError, send_error

#: Default cap: 16 MiB, enough for a batch of images, far from what hurts the server.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyLimitMiddleware:
    """Refuses bodies over `max_body_bytes` with 413 and closes the connection."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared: int | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    not_a_number = InvalidRequestError("Content-Length is not a number",
                                                       headers={"connection": "close"})
                    await send_error(send, scope["path"], not_a_number)
                    return
                break
        if declared is not None:
            if declared > limit:
                await send_error(send, scope["path"], BodyTooLargeError(limit, declared))
                return
            # The server never hands the app more than Content-Length bytes: no need to count.
            await self.app(scope, receive, send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as exc:
            if started:
                raise
            await send_error(send, scope["path"], exc)
