"""The ASGI middleware every request passes through: authenticate, limit, scope, meter, audit.

Pure ASGI (not `BaseHTTPMiddleware`): it costs one function call per request and lets the
response stream untouched. In order, for each HTTP request:

1. `/v2/health/live` and `/v2/health/ready` pass without a key (probes carry none).
2. The bearer key is checked (`Authenticator`); no usable key -> 401 with `WWW-Authenticate`.
   With `--insecure-no-auth` every request acts as an admin instead, and every response carries
   `X-Kcloud-Insecure: auth-disabled`.
3. `/metrics` (labelled with every tenant's models) needs a farm-wide key -> otherwise 403.
   A read-only key may only GET/HEAD/OPTIONS -> otherwise 403 (no changes, no inference).
4. The key's token bucket, then the tenant's concurrency cap -> 429 with `Retry-After`.
   Both are checked before the body is read, and a refusal is held back until the client could
   usefully retry (at most `TARPIT_MAX_S`), so a flood costs the server timers, not CPU.
5. The request runs with its `RequestContext` bound (isolation, metering and handlers read it).
6. State-changing requests under `/api/` are written to the audit log before the answer leaves.
7. Inference requests (POST outside `/api/`) are counted for usage, in memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kcloud.serving.gateway.errors import ErrorReply, send_error
from kcloud.tenancy.auth import AuthError, KeyRecord
from kcloud.tenancy.context import RequestContext, bind, unbind
from kcloud.tenancy.metering import UsageBucket, utc_day
from kcloud.tenancy.ratelimit import retry_after_header
from kcloud.tenancy.roles import INSECURE, Role

if TYPE_CHECKING:
    from kcloud.tenancy.service import Tenancy

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
#: Routes whose answer covers every tenant (Prometheus metrics are labelled with every model).
FARM_WIDE_PATHS = frozenset({"/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INSECURE_HEADER = (b"x-kcloud-insecure", b"auth-disabled")
ADMIN_PREFIX = "/api/"
#: Longest a 429 is held back before it is sent (see `TenancyMiddleware._throttled_refusal`).
TARPIT_MAX_S = 0.25
#: Most refusals of one key held back at once; beyond, refusals go out at once and close the connection.
TARPIT_MAX_PER_KEY = 64
#: Retry-After (and hold-back) for a refusal by the concurrency cap: requests in flight end in ms to s.
CONCURRENCY_RETRY_S = 0.1


class TenancyMiddleware:
    def __init__(self, app: ASGIApp, tenancy: Tenancy) -> None:
        self.app = app
        self.tenancy = tenancy
        #: Refusals waiting out their delay, per key.
        self._tarpitted: dict[int, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        tenancy = self.tenancy
        path: str = scope["path"]
        method: str = scope["method"]
        if tenancy.insecure:
            send = _insecure_send(send)
        if path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return

        record: KeyRecord | None = None
        if tenancy.insecure:
            principal = INSECURE
        else:
            try:
                record = await tenancy.authenticator.authenticate(_header(scope, b"authorization"))
            except AuthError as exc:
                challenge = {"www-authenticate": exc.www_authenticate}
                await _refuse(send, path, 401, str(exc), challenge)
                return
            principal = record.principal

        metered = method == "POST" and not path.startswith(ADMIN_PREFIX)
        ctx = RequestContext(principal)

        if path in FARM_WIDE_PATHS and not principal.farm_wide:
            await _refuse(send, path, 403, f"{path} shows the whole farm (every tenant's models); "
                                            f"it needs an admin key or a farm-wide read-only key")
            return
        if principal.role is Role.READONLY and method not in SAFE_METHODS:
            self._meter(ctx, metered, error=True)
            await _refuse(send, path, 403, f"key {principal.label} is read-only: it may list and read, "
                                            f"not change anything or run inference")
            return
        if record is not None:
            wait = tenancy.rate_limiter.take(record.key_id, record.requests_per_second, record.burst)
            if wait > 0:
                self._meter(ctx, metered, error=True)
                burst = record.burst or record.requests_per_second
                await self._throttled_refusal(
                    send, path, record.key_id, wait,
                    f"rate limit of key {principal.label} reached "
                    f"({record.requests_per_second:g} requests/s, burst {burst:g})",
                )
                return
        tenant_id = principal.tenant_id
        capped = record is not None and tenant_id is not None and record.max_concurrency is not None
        if capped:
            assert record is not None and tenant_id is not None
            if not tenancy.concurrency.try_enter(tenant_id, record.max_concurrency):
                self._meter(ctx, metered, error=True)
                await self._throttled_refusal(
                    send, path, record.key_id, CONCURRENCY_RETRY_S,
                    f"tenant {principal.tenant_name!r} has {record.max_concurrency} requests in flight, "
                    f"its concurrency cap",
                )
                return

        audited = method not in SAFE_METHODS and path.startswith(ADMIN_PREFIX)
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if audited:
                    await tenancy.audit_request(ctx, method, path, status)
            await send(message)

        token = bind(ctx)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            unbind(token)
            if capped:
                tenancy.concurrency.leave(tenant_id)  # type: ignore[arg-type]
            self._meter(ctx, metered, error=status >= 400)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No route speaks WebSocket today; one added later is authenticated all the same
        (a refused handshake is closed with 1008, policy violation)."""
        if self.tenancy.insecure:
            principal = INSECURE
        else:
            try:
                record = await self.tenancy.authenticator.authenticate(_header(scope, b"authorization"))
            except AuthError:
                await send({"type": "websocket.close", "code": 1008})
                return
            principal = record.principal
        token = bind(RequestContext(principal))
        try:
            await self.app(scope, receive, send)
        finally:
            unbind(token)

    async def _throttled_refusal(
        self, send: Send, path: str, key_id: int, wait_s: float, message: str
    ) -> None:
        """429 with Retry-After, sent no sooner than `min(wait_s, TARPIT_MAX_S)` from now.

        The delay costs a timer, not CPU, and it is what keeps a flood from turning the event loop
        into a refusal machine: a client with n connections that ignores Retry-After gets at most
        about n / TARPIT_MAX_S refusals a second instead of as many as the loop can write. A client
        that honours Retry-After never waits for it. Past `TARPIT_MAX_PER_KEY` refusals of one key
        waiting at once, the rest are answered at once with `Connection: close`, so a flood of
        connections costs the flooder a reconnect each, and the server no unbounded set of timers.
        """
        retry = {"retry-after": retry_after_header(wait_s)}
        waiting = self._tarpitted.get(key_id, 0)
        if waiting >= TARPIT_MAX_PER_KEY:
            await _refuse(send, path, 429, message, {**retry, "connection": "close"})
            return
        self._tarpitted[key_id] = waiting + 1
        try:
            await anyio.sleep(min(wait_s, TARPIT_MAX_S))
        finally:
            left = self._tarpitted[key_id] - 1
            if left:
                self._tarpitted[key_id] = left
            else:
                del self._tarpitted[key_id]
        await _refuse(send, path, 429, message, retry)

    def _meter(self, ctx: RequestContext, metered: bool, *, error: bool) -> None:
        if not metered:
            return
        principal = ctx.principal
        bucket = UsageBucket(
            day=utc_day(), tenant_id=principal.tenant_id, key_id=principal.key_id, deployment=ctx.deployment,
            tenant_name=principal.tenant_name, key_prefix=principal.key_prefix,
        )
        self.tenancy.meter.record(bucket, samples=ctx.samples, error=error, device_seconds=ctx.device_seconds)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _insecure_send(send: Send) -> Send:
    async def with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), INSECURE_HEADER]}
        await send(message)

    return with_header


async def _refuse(
    send: Send, path: str, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    await send_error(send, path, ErrorReply(status, message, headers or {}))
