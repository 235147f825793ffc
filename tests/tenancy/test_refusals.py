"""How 429s are held before they are sent (`TenancyMiddleware._next_hold`), with the middleware's
timer replaced by a recorder and its clock set by the test: no sleeps, no timing assertions.

A client that ignores Retry-After is held longer each time, up to `HOLD_MAX_S`, on a connection
that stays open; one that waits for Retry-After keeps the short hold; memory stays bounded; and a
429 sent by the app (a model's full queue) is held the same way, its concurrency slot given back
first. The speed this buys is measured by benchmarks/overload.py (b), not here.
"""

from __future__ import annotations

import anyio
import pytest
from tenancy_support import SERVER_SECRET

from kcloud.tenancy import middleware as middleware_module
from kcloud.tenancy.middleware import (
    CONCURRENCY_RETRY_S,
    HOLD_MAX_S,
    MAX_HELD,
    TARPIT_MAX_S,
    TenancyMiddleware,
)

SECRET = SERVER_SECRET.encode()


class Clock:
    """The middleware's `time.monotonic`, set by the test; `sleep` records holds and advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.holds: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.holds.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    """Handed to the middleware, never patched into `time`/`anyio`: those are the whole process's,
    and a background gateway of another test module would sleep by the fake clock."""
    return Clock()


def _middleware(clock: Clock) -> TenancyMiddleware:
    return TenancyMiddleware(app=None, tenancy=None, clock=clock.monotonic, sleep=clock.sleep)  # type: ignore[arg-type]


def _refuse_n(middleware: TenancyMiddleware, clock: Clock, n: int, *, host: str = "10.0.0.1",
              wait_after_s: float = 0.0, key_id: int = 7) -> list[dict]:
    """n refusals of one key from one host; `wait_after_s` is how long the client waits after each."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        for port in range(n):  # a new connection each time makes no difference: the host counts
            scope = {"client": (host, 40000 + port)}
            await middleware._throttled_refusal(scope, send, "/v2/models/m/infer", key_id,
                                                CONCURRENCY_RETRY_S, "over the cap")
            clock.now += wait_after_s

    anyio.run(run)
    return [m for m in sent if m["type"] == "http.response.start"]


def test_a_client_ignoring_retry_after_is_held_longer_each_time_on_an_open_connection(clock):
    middleware = _middleware(clock)
    starts = _refuse_n(middleware, clock, 7)
    first = min(CONCURRENCY_RETRY_S, TARPIT_MAX_S)
    assert clock.holds == [first, 2 * first, 4 * first, 8 * first, HOLD_MAX_S, HOLD_MAX_S, HOLD_MAX_S]
    for start in starts:
        headers = dict(start["headers"])
        assert start["status"] == 429 and headers[b"retry-after"] == b"1"
        assert b"connection" not in headers  # no reconnect churn: the connection stays open


def test_a_client_that_waits_for_retry_after_keeps_the_short_hold(clock):
    middleware = _middleware(clock)
    _refuse_n(middleware, clock, 5, wait_after_s=1.0)  # Retry-After: 1, honoured
    assert clock.holds == [CONCURRENCY_RETRY_S] * 5


def test_holds_are_kept_per_key_and_client(clock):
    middleware = _middleware(clock)
    _refuse_n(middleware, clock, 4, key_id=1)
    clock.holds.clear()
    _refuse_n(middleware, clock, 1, key_id=2)  # another key from the same host starts afresh
    _refuse_n(middleware, clock, 1, key_id=1, host="10.0.0.2")  # and the same key elsewhere
    assert clock.holds == [CONCURRENCY_RETRY_S, CONCURRENCY_RETRY_S]


def test_memory_is_bounded(clock, monkeypatch):
    monkeypatch.setattr(middleware_module, "MAX_TRACKED", 3)
    middleware = _middleware(clock)
    for index in range(10):
        _refuse_n(middleware, clock, 1, host=f"10.0.1.{index}")
    assert list(middleware._refused) == [(7, "10.0.1.7"), (7, "10.0.1.8"), (7, "10.0.1.9")]


def test_past_the_bound_of_held_refusals_one_is_sent_at_once_and_closes(clock):
    middleware = _middleware(clock)
    middleware._held = MAX_HELD
    (start,) = _refuse_n(middleware, clock, 1)
    assert clock.holds == []
    assert dict(start["headers"])[b"connection"] == b"close"


def test_a_429_from_the_app_is_held_with_its_concurrency_slot_given_back(db, clock, monkeypatch):
    """A model's full queue answers 429 inside the app; the middleware holds that answer as its own
    refusals (a flooder ignoring it gets longer holds), and frees the tenant's slot before holding."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from kcloud.tenancy import store
    from kcloud.tenancy.quotas import QuotaLimits
    from kcloud.tenancy.roles import Role
    from kcloud.tenancy.service import Tenancy

    async def queue_full(request):
        return JSONResponse({"error": "queue full"}, status_code=429, headers={"retry-after": "2"})

    tenant = store.create_tenant(db, "held-co", actor="test", quota=QuotaLimits(max_concurrency=4))
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="held-co", actor="test")
    tenancy = Tenancy(db, server_secret=SECRET)
    app = Starlette(routes=[Route("/v2/models/m/infer", queue_full, methods=["POST"])])
    in_flight_while_held: list[int] = []

    async def sleep(seconds: float) -> None:
        in_flight_while_held.append(tenancy.concurrency.in_flight(tenant.id))
        await clock.sleep(seconds)

    app.add_middleware(TenancyMiddleware, tenancy=tenancy, clock=clock.monotonic, sleep=sleep)

    with TestClient(app) as client:
        for _ in range(3):
            answer = client.post("/v2/models/m/infer", headers={"Authorization": f"Bearer {made.key}"})
            assert answer.status_code == 429 and answer.headers["retry-after"] == "2"
    assert clock.holds == [TARPIT_MAX_S, 2 * TARPIT_MAX_S, HOLD_MAX_S]
    assert in_flight_while_held == [0, 0, 0]
