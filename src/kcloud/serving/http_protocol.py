"""The gateway's HTTP/1.1 connections, with limits: how long a client may take, and how many it may hold.

uvicorn closes an idle keep-alive connection, but nothing else: a connection that sends nothing,
or half its headers, or headers and then holds its body back, stays open until shutdown, and a
held-back body makes a graceful shutdown wait its whole grace period and then answer 500. One
client could also open connections until the process runs out of file descriptors. This module
is uvicorn's httptools protocol with those holes closed (`protocol_class(limits)` is passed to
`uvicorn.Config(http=...)`):

- **Header timeout** (`header_timeout_s`): a request's headers must be complete within this time
  of its first byte; a new connection's first request, within this time of the connection. A
  connection that sent nothing is closed; one that sent part of its headers is answered 408 and
  closed. A total (not per-read) limit, as nginx's `client_header_timeout`: headers are small, so
  a client still sending them after seconds is trickling on purpose (slowloris).
- **Body timeout** (`body_timeout_s`): while a request's body is arriving, the longest pause
  between two pieces of it. When it passes, the request is answered 408 and the connection
  closed; the application's `receive()` sees a disconnect, so nothing waits on the missing body.
  Per pause rather than for the whole body (as nginx's `client_body_timeout`), so that a large
  body on a slow link still arrives; the pause is not counted while the gateway itself is the
  one holding things up (the application has not read what came, or the client waits for its
  `100 Continue`).
- **Keep-alive timeout**: uvicorn's own (`timeout_keep_alive`), set from the same options.
- **Per-client cap** (`max_per_client`): open connections from one peer address. The connection
  over the cap is answered 503 (`Retry-After: 1`) at once, without reading a request, and
  closed: the answer is written, our side shut for writing, and whatever the client still sends
  is read and dropped for up to a second, so that the close does not reset the connection and
  lose the answer.
- **Shutdown**: an idle connection is closed at once (uvicorn does); a connection whose headers
  or body are still being held back is answered 408 and closed at once, instead of holding the
  shutdown for its grace period and then getting a 500. A 408 tells the client it may send the
  request again (RFC 9110 §15.5.9), to this server once it is back or to another.

The cost on the serving path is near zero: a request that arrives in one read (every ordinary
request) arms no timer of its own. A connection arms one timer when it opens, cancelled when its
first headers are complete; a timer is armed only when a read ends in the middle of a request's
headers or body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kcloud.serving.gateway.errors import error_body

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 1024
#: How long a refused connection's further bytes are read and dropped before it is closed.
REFUSED_LINGER_S = 1.0

# Where a connection is in its current request (set by the parser's callbacks).
_IDLE = 0  # between requests: before the first byte, or after a request's last
_HEADERS = 1  # the request line or headers are arriving
_BODY = 2  # the headers are complete, the body is not


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections it may hold."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    #: Open connections from one peer address; 0 = no cap.
    max_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_per_client < 0:
            raise ValueError(f"max_per_client must be 0 (no cap) or more, got {self.max_per_client}")


def protocol_class(limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
    """A protocol class for one server: `limits`, and its own count of connections per client."""

    class ServerHttpProtocol(LimitedHttpProtocol):
        pass

    ServerHttpProtocol.limits = limits
    ServerHttpProtocol.open_per_client = {}
    return ServerHttpProtocol


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts and a per-client cap.

    Use a subclass from `protocol_class`: the class attributes below are shared by every
    connection of one server.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    open_per_client: ClassVar[dict[str, int]] = {}

    # Per-connection state; class defaults so that creating a connection costs no extra __init__.
    _phase: int = _IDLE
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_seen: float = 0.0  # when the body last made progress (loop time)
    _counted: str | None = None  # the peer address this connection counts against, while it does
    _refused: bool = False

    # ---------------------------------------------------------------- connection lifetime
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if limits.max_per_client:
            host = self.client[0] if self.client else ""
            count = self.open_per_client.get(host, 0)
            if count >= limits.max_per_client:
                self._refuse()
                return
            self.open_per_client[host] = count + 1
            self._counted = host
        self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped, so that closing does not reset the connection
        super().data_received(data)
        # Arm a timer only when this read ended inside a request.
        phase = self._phase
        if phase == _BODY:
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        elif phase == _HEADERS and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the WebSocket protocol; its timers and count end here.
        self._stop_timers()
        self._release()
        self._phase = _IDLE
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """Graceful shutdown: a request still being held back by its client is answered 408 now."""
        cycle = self.cycle
        if self._phase == _BODY and cycle is not None and not cycle.response_started:
            self._answer_and_close(408, "the server is shutting down and the request body was not "
                                        "complete; send the request again", cycle.scope.get("path", ""))
        elif self._phase == _HEADERS and (cycle is None or cycle.response_complete):
            self._answer_and_close(408, "the server is shutting down and the request headers were not "
                                        "complete; send the request again")
        else:
            super().shutdown()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()
        cycle = self.cycle
        if (cycle is not None and cycle.response_complete and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()):
            # Answered before its body had all come (uvicorn armed the keep-alive timer then, and the
            # body's later reads cancelled it): the connection is idle from now, so time it again.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    # -------------------------------------------------------------------------- timers
    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._phase != _HEADERS:  # a connection that never sent a byte
            self.transport.close()
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The next request's headers arrive while we still answer the previous one (pipelining):
            # the client waits on us, so its time starts again.
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)
            return
        limit = self.limits.header_timeout_s
        self._answer_and_close(408, f"the request headers were not complete within {limit:g} s")

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._phase != _BODY:
            return
        cycle = self.cycle
        if cycle is None:  # not a request the application serves (cannot happen; be safe)
            self.transport.close()
            return
        now = self.loop.time()
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._body_seen = now  # we are the ones holding things up, not the client
        limit = self.limits.body_timeout_s
        idle = now - self._body_seen
        if idle < limit:
            self._body_timer = self.loop.call_later(limit - idle, self._body_timeout)
            return
        if cycle.response_started:  # answered already (without reading the whole body): just close
            self.transport.close()
            return
        self._answer_and_close(408, f"no part of the request body arrived for {limit:g} s",
                               cycle.scope.get("path", ""))

    def _stop_timers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # ------------------------------------------------------------------------- answers
    def _answer_and_close(self, status: int, message: str, path: str = "") -> None:
        """Answer `status` with a JSON error and close; the request's application sees a disconnect."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its receive() returns http.disconnect; what it sends is dropped
            cycle.message_event.set()
        self._write_error(status, message, path)
        self.transport.close()

    def _write_error(self, status: int, message: str, path: str = "",
                     extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        body = error_body(path, status, message)
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *extra):
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ])
        self.transport.write(b"".join(content))

    def _refuse(self) -> None:
        """Answer 503 to a connection over the per-client cap, before it sends anything, and end it."""
        self.connections.discard(self)  # not a connection the server serves or waits for
        self._refused = True
        self._write_error(503, f"too many open connections from this address (at most "
                               f"{self.limits.max_per_client}); close some and retry",
                          extra=((b"retry-after", b"1"),))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._header_timer = self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

    def _release(self) -> None:
        host = self._counted
        if host is None:
            return
        self._counted = None
        left = self.open_per_client.get(host, 1) - 1
        if left > 0:
            self.open_per_client[host] = left
        else:
            self.open_per_client.pop(host, None)
