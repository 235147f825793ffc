"""The ASGI middleware every request passes through: authenticate, limit, scope, meter, audit.

Pure ASGI (not `BaseHTTPMiddleware`): it costs one function call per request and lets the
response stream untouched. In order, for each HTTP request:

1. `/v2/health/live` and `/v2/health/ready` pass without a key (probes carry none), and so do
   reads of the console's static files under `/ui` (`PUBLIC_PREFIX`).
2. The bearer key is checked (`Authenticator`); no usable key -> 401 with `WWW-Authenticate`.
   With `--insecure-no-auth` every request acts as an admin instead, and every response carries
   `X-Kcloud-Insecure: auth-disabled`.
3. `/metrics` (labelled with every tenant's models) needs a farm-wide key -> otherwise 403.
   A read-only key may only GET/HEAD/OPTIONS -> otherwise 403 (no changes, no inference).
4. The key's token bucket, then the tenant's concurrency cap -> 429 with `Retry-After`.
   Both are checked before the body is read, and a refusal is held back before it is sent
   (`TenancyMiddleware._throttled_refusal`): the limit's own wait for a client that retries when
   told, up to `HOLD_MAX_S` for one that keeps coming back early. A flood of refused requests
   then costs the server a timer per connection and second, not its CPU.
5. The request runs with its `RequestContext` bound (isolation, metering and handlers read it).
6. State-changing requests under `/api/` are written to the audit log, once, whatever the outcome:
   before the answer leaves, or, when the app raised before answering, with status 500 before the
   500 leaves (the error handler that sends it sits outside this middleware).
7. Inference requests (POST outside `/api/`) are counted for usage, in memory, and written to the
   database within `kcloud.tenancy.service.DEFAULT_USAGE_FLUSH_S`; or, with usage written before
   acknowledging (`Tenancy.usage_before_ack`), the answer's last part waits for the write.
   A request is counted once its whole response has been sent (after the app returns, or just
   before the last body part when written before acknowledging), never at its start: a streamed
   LLM answer's tokens are known only when its generation ends (`kcloud.tenancy.tokens`), after
   the status and the first chunks left. A stream the client abandons is counted when the app
   returns, with whatever tokens the generation was charged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kcloud.errors import KcloudError
from kcloud.serving.gateway.errors import send_error
from kcloud.tenancy.auth import Authenticator, AuthError, KeyRecord
from kcloud.tenancy.context import RequestContext, bind, unbind
from kcloud.tenancy.metering import UsageBucket, UsageMeter, utc_day
from kcloud.tenancy.ratelimit import ConcurrencyLimiter, KeyRateLimiter, retry_after_header
from kcloud.tenancy.roles import INSECURE, Role

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
#: The web console's static files (`kcloud.console`): pages and scripts that hold no data. The data
#: they show comes from the API, with the key the user gives the login form.
PUBLIC_PREFIX = "/ui"
#: Routes whose answer covers every tenant (Prometheus metrics are labelled with every model).
FARM_WIDE_PATHS = frozenset({"/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INSECURE_HEADER = (b"x-kcloud-insecure", b"auth-disabled")
ADMIN_PREFIX = "/api/"
#: Longest first hold of a 429 (see `TenancyMiddleware._throttled_refusal`): a client that
#: retries when told waits at most this, besides Retry-After.
TARPIT_MAX_S = 0.25
#: Longest hold of a 429, for a client that keeps coming back before its Retry-After: each early
#: return doubles its hold up to this, so n such connections get about n refusals a second.
HOLD_MAX_S = 1.0
#: Refusals held back at once, all keys together. Each is a sleeping task beside a connection the
#: server holds anyway; past this bound a refusal is sent at once with `Connection: close`.
MAX_HELD = 4096
#: (key, client address) pairs whose refusal history is remembered; the least recently refused
#: are forgotten first, so the memory is bounded whatever the number of clients.
MAX_TRACKED = 16_384
#: Doublings of the hold at most (2 ** 20 x 1 µs is already past `HOLD_MAX_S`).
_MAX_STRIKES = 20
#: Retry-After (and hold-back) for a refusal by the concurrency cap: requests in flight end in ms to s.
CONCURRENCY_RETRY_S = 0.1


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class Tenancy(Protocol):
    """What the middleware uses of `kcloud.tenancy.service.Tenancy` (which adds the middleware, so
    the middleware names only this, not that module)."""

    insecure: bool
    usage_before_ack: bool
    authenticator: Authenticator
    rate_limiter: KeyRateLimiter
    concurrency: ConcurrencyLimiter
    meter: UsageMeter

    async def audit_request(self, ctx: RequestContext, method: str, path: str, status: int) -> None: ...

    async def usage_written(self) -> None: ...


class TenancyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        tenancy: Tenancy,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.app = app
        self.tenancy = tenancy
        #: The refusal holds' clock and sleep (a test gives its own; patching the `time` or `anyio`
        #: module instead would change them for every thread of the process).
        self._clock = clock
        self._sleep = sleep
        #: Refusals waiting out their hold, all keys together.
        self._held = 0
        #: (key id, client host) -> (early returns in a row, when its last Retry-After ends), in
        #: order of the last refusal (a dict keeps insertion order: the first entry is the oldest).
        self._refused: dict[tuple[int, str | None], tuple[int, float]] = {}

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
        if path in PUBLIC_PATHS or (_under(path, PUBLIC_PREFIX) and method in SAFE_METHODS):
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
        ctx = RequestContext(principal, token_limits=record.token_limits if record is not None else None)

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
                    scope, send, path, record.key_id, wait,
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
                    scope, send, path, record.key_id, CONCURRENCY_RETRY_S,
                    f"tenant {principal.tenant_name!r} has {record.max_concurrency} requests in flight, "
                    f"its concurrency cap",
                )
                return

        audited = method not in SAFE_METHODS and path.startswith(ADMIN_PREFIX)
        metered_before_ack = metered and tenancy.usage_before_ack
        #: What uvicorn answers when the app ends without starting a response, and what the outer
        #: error handler answers when it raised: the status of a request that never sent one.
        status = 500
        # One audit row and one usage count per request, whichever path gets there first.
        audit_pending = audited
        meter_pending = metered
        slot_held = capped

        async def observed_send(message: Message) -> None:
            nonlocal status, audit_pending, meter_pending, slot_held
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if audit_pending:
                    audit_pending = False
                    await tenancy.audit_request(ctx, method, path, status)
                if status == 429 and record is not None:
                    # refused further in (a model's queue is full or too slow): held like the
                    # middleware's own refusals, its concurrency slot given back first
                    if slot_held:
                        slot_held = False
                        tenancy.concurrency.leave(tenant_id)  # type: ignore[arg-type]
                    await self._hold_app_refusal(scope, record.key_id, message)
            elif (kind == "http.response.body" and meter_pending and metered_before_ack and status < 400
                  and not message.get("more_body", False)):
                # the answer's last part (what is billed): a streamed generation has ended by now,
                # so its tokens are on `ctx`; the client has the answer only once this is sent
                meter_pending = False
                self._meter(ctx, True, error=False)
                await tenancy.usage_written()
            await send(message)

        token = bind(ctx)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            unbind(token)
            if slot_held:
                tenancy.concurrency.leave(tenant_id)  # type: ignore[arg-type]
            if meter_pending:
                self._meter(ctx, True, error=status >= 400)
            if audit_pending:
                # The app raised (or ended) before answering: the 500 is sent by the error handler
                # outside this middleware, after this row is written; shielded, so a cancelled
                # request is audited all the same.
                with anyio.CancelScope(shield=True):
                    await tenancy.audit_request(ctx, method, path, status)

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
        self, scope: Scope, send: Send, path: str, key_id: int, wait_s: float, message: str
    ) -> None:
        """429 with Retry-After, held back before it is sent (`_next_hold`); the connection stays
        open. Past `MAX_HELD` refusals held at once, one is sent at once with `Connection: close`."""
        retry = retry_after_header(wait_s)
        hold = self._next_hold(scope, key_id, wait_s, int(retry))
        if hold is None:
            await _refuse(send, path, 429, message, {"retry-after": retry, "connection": "close"})
            return
        await self._hold(hold)
        await _refuse(send, path, 429, message, {"retry-after": retry})

    async def _hold_app_refusal(self, scope: Scope, key_id: int, start: Message) -> None:
        """Hold a 429 that the app sent (a model's queue refused the request) as the middleware
        holds its own: a client that ignores Retry-After is refused more slowly each time,
        wherever the refusal came from."""
        retry_s = CONCURRENCY_RETRY_S
        for name, value in start.get("headers", ()):
            if name.lower() == b"retry-after":
                with contextlib.suppress(ValueError):
                    retry_s = float(value)
                break
        hold = self._next_hold(scope, key_id, retry_s, max(1, int(retry_s)))
        if hold is not None:
            await self._hold(hold)

    def _next_hold(self, scope: Scope, key_id: int, wait_s: float, retry_after_s: int) -> float | None:
        """How long to hold a refusal of `key_id` from this client before sending it; None past
        `MAX_HELD` holds at once (send it now).

        A refusal answered at once is an invitation to ask again at once: a client with n
        connections that ignores Retry-After would get as many refusals as the event loop can
        write, each costing the HTTP parse, the key check and the answer, and that CPU is taken
        from the requests that were admitted. So the answer is held on a timer (no CPU):

        - the first refusal of a (key, client address) is held `min(wait_s, TARPIT_MAX_S)`: a
          retry sooner would be refused again, and a client that honours Retry-After waits that
          long anyway;
        - each refusal that comes before the previous one's Retry-After ended doubles the hold,
          up to `HOLD_MAX_S`: n connections that ignore it get about n refusals a second in all.

        Keeping the connection open matters: a `Connection: close` makes the flooder reconnect,
        which costs the server more than the refusal. Memory is bounded: at most `MAX_TRACKED`
        clients are remembered, the least recently refused forgotten first.
        """
        client = scope.get("client")
        who = (key_id, client[0] if client else None)
        now = self._clock()
        last = self._refused.pop(who, None)  # re-inserted below: the dict stays in refusal order
        strikes = min(last[0] + 1, _MAX_STRIKES) if last is not None and now < last[1] else 0
        hold = min(HOLD_MAX_S, min(wait_s, TARPIT_MAX_S) * (1 << strikes))
        self._refused[who] = (strikes, now + hold + retry_after_s)
        if len(self._refused) > MAX_TRACKED:
            del self._refused[next(iter(self._refused))]
        return None if self._held >= MAX_HELD else hold

    async def _hold(self, seconds: float) -> None:
        self._held += 1
        try:
            await self._sleep(seconds)
        finally:
            self._held -= 1

    def _meter(self, ctx: RequestContext, metered: bool, *, error: bool) -> None:
        if not metered:
            return
        principal = ctx.principal
        bucket = UsageBucket(
            day=utc_day(), tenant_id=principal.tenant_id, key_id=principal.key_id, deployment=ctx.deployment,
            tenant_name=principal.tenant_name, key_prefix=principal.key_prefix,
        )
        self.tenancy.meter.record(bucket, samples=ctx.samples, error=error, device_seconds=ctx.device_seconds,
                                  prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens)


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
    await send_error(send, path, KcloudError(message, status=status, headers=headers))
