"""Tenancy's database operations on SQLite and PostgreSQL, without a server: the authenticator's
decision path, usage adding up, and the first-start key."""

from __future__ import annotations

import time
from datetime import date

import anyio
import pytest
from tenancy_support import SERVER_SECRET

from kcloud.tenancy import auth as auth_module
from kcloud.tenancy import keys as keys_module
from kcloud.tenancy import store, usage
from kcloud.tenancy.auth import Authenticator, AuthError
from kcloud.tenancy.metering import UsageBucket, UsageCounts
from kcloud.tenancy.roles import Role

SECRET = SERVER_SECRET.encode()


def test_authenticator_decides_with_compare_digest(db, monkeypatch):
    """The request path checks the presented key with `hmac.compare_digest` (a spy says no, and
    the key is refused even though it is right) and never compares digests any other way."""
    store.create_tenant(db, "store-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="store-co", actor="test")
    authenticator = Authenticator(db, SECRET)
    record = anyio.run(authenticator.authenticate, f"Bearer {made.key}")
    assert record.prefix == made.info.prefix and record.tenant_name == "store-co"

    seen: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return False

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    with pytest.raises(AuthError, match="invalid API key"):
        anyio.run(authenticator.authenticate, f"Bearer {made.key}")
    # first against the key that matched before (the cheap path), then the HMAC digest
    assert seen == [(made.key, made.key), (seen[1][0], record.digest)]


def test_a_wrong_secret_under_a_known_prefix_is_refused_after_the_right_one(db):
    """The remembered match is only a shortcut for the exact key that matched: another secret
    under the same prefix still goes through the HMAC and fails, and does not evict the match."""
    store.create_tenant(db, "prefix-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="prefix-co", actor="test")
    authenticator = Authenticator(db, SECRET, ttl_s=3600)
    anyio.run(authenticator.authenticate, f"Bearer {made.key}")
    secret = made.key.rsplit("_", 1)[1]
    forged = made.key[: -len(secret)] + ("A" if secret[0] != "A" else "B") + secret[1:]
    assert keys_module.parse_key(forged).prefix == made.info.prefix
    with pytest.raises(AuthError, match="invalid API key"):
        anyio.run(authenticator.authenticate, f"Bearer {forged}")
    assert anyio.run(authenticator.authenticate, f"Bearer {made.key}").prefix == made.info.prefix


def test_an_unknown_prefix_and_a_wrong_secret_are_refused_by_the_same_work(db, monkeypatch):
    """Both go through one HMAC + constant-time comparison and are held to the same floor before
    the 401, so their refusal times say nothing about whether a prefix exists (the times
    themselves are measured by benchmarks/overload.py (d), not asserted here)."""
    store.create_tenant(db, "timing-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="timing-co", actor="test")
    authenticator = Authenticator(db, SECRET, ttl_s=3600)
    anyio.run(authenticator.authenticate, f"Bearer {made.key}")  # cached, and its match remembered
    secret = made.key.rsplit("_", 1)[1]
    wrong_secret = made.key[: -len(secret)] + ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown = keys_module.generate_key(SECRET).text

    verified: list[str] = []
    real_key_matches = auth_module.key_matches

    def counting(text: str, digest: str, server_secret: bytes) -> bool:
        verified.append(text)
        return real_key_matches(text, digest, server_secret)

    held: list[float] = []

    async def hold(started: float) -> None:
        held.append(started)

    monkeypatch.setattr(auth_module, "key_matches", counting)
    monkeypatch.setattr(Authenticator, "_hold_refusal", staticmethod(hold))
    for key in (wrong_secret, unknown):
        before = time.monotonic()
        with pytest.raises(AuthError, match=r"^invalid API key$"):
            anyio.run(authenticator.authenticate, f"Bearer {key}")
        assert verified == [key], "each refusal runs the HMAC and comparison exactly once"
        assert len(held) == 1 and held[0] >= before, "and is held from the request's start"
        verified.clear()
        held.clear()
    assert auth_module.INVALID_KEY_FLOOR_S > 0.01  # far above a database look-up


def _counted_lookups(monkeypatch, fail_first: bool = False) -> list[str]:
    """Make the authenticator's database look-up slow (so requests pile up behind it) and count it."""
    calls: list[str] = []
    real = auth_module.load_key_record

    def slow(db, prefix):
        calls.append(prefix)
        record = real(db, prefix)  # read now, answered late: the row is as it was at the start
        time.sleep(0.2)
        if fail_first and len(calls) == 1:
            raise RuntimeError("database went away")
        return record

    monkeypatch.setattr(auth_module, "load_key_record", slow)
    return calls


async def _authenticate_at_once(authenticator: Authenticator, key: str, n: int) -> list:
    outcomes: list = []

    async def one() -> None:
        try:
            outcomes.append(await authenticator.authenticate(f"Bearer {key}"))
        except Exception as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(n):
            group.start_soon(one)
    return outcomes


def test_requests_missing_the_cache_together_share_one_lookup(db, monkeypatch):
    store.create_tenant(db, "herd-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="herd-co", actor="test")
    calls = _counted_lookups(monkeypatch)
    authenticator = Authenticator(db, SECRET, ttl_s=3600)
    outcomes = anyio.run(_authenticate_at_once, authenticator, made.key, 32)
    assert calls == [made.info.prefix]
    assert len(outcomes) == 32 and all(o.prefix == made.info.prefix for o in outcomes)


def test_a_failed_shared_lookup_fails_only_its_own_request(db, monkeypatch):
    """The waiting requests do not inherit the error: one of them looks the key up again."""
    store.create_tenant(db, "retry-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="retry-co", actor="test")
    calls = _counted_lookups(monkeypatch, fail_first=True)
    authenticator = Authenticator(db, SECRET, ttl_s=3600)
    outcomes = anyio.run(_authenticate_at_once, authenticator, made.key, 8)
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(calls) == 2 and len(failed) == 1 and "went away" in str(failed[0])
    assert all(o.prefix == made.info.prefix for o in outcomes if o not in failed)


def test_a_request_after_invalidate_does_not_join_a_lookup_begun_before_it(db, monkeypatch):
    """A revocation through this server takes effect at once, even while a look-up that read the
    row before it is still on its way: later requests look again, and the stale row is not cached."""
    store.create_tenant(db, "race-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.MEMBER, tenant="race-co", actor="test")
    calls = _counted_lookups(monkeypatch)
    authenticator = Authenticator(db, SECRET, ttl_s=3600)

    async def race() -> tuple[object, object, object]:
        outcomes: dict[str, object] = {}

        async def attempt(name: str) -> None:
            try:
                outcomes[name] = await authenticator.authenticate(f"Bearer {made.key}")
            except AuthError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(attempt, "before")
            await anyio.sleep(0.1)  # its look-up has read the row and is on its way back
            store.revoke_key(db, made.info.prefix, actor="test")
            authenticator.invalidate(made.info.prefix)  # what the API does on revoke
            group.start_soon(attempt, "after")
        await attempt("later")
        return outcomes["before"], outcomes["after"], outcomes["later"]

    before, after, later = anyio.run(race)
    assert getattr(before, "prefix", None) == made.info.prefix  # begun before the revocation
    assert isinstance(after, AuthError) and "was revoked" in str(after)
    assert isinstance(later, AuthError) and "was revoked" in str(later)
    assert len(calls) == 2


def test_revocation_reaches_the_cache_when_told(db):
    store.create_tenant(db, "cache-co", actor="test")
    made = store.create_key(db, SECRET, role=Role.READONLY, tenant="cache-co", actor="test")
    authenticator = Authenticator(db, SECRET, ttl_s=3600)
    anyio.run(authenticator.authenticate, f"Bearer {made.key}")
    store.revoke_key(db, made.info.prefix, actor="test")
    anyio.run(authenticator.authenticate, f"Bearer {made.key}")  # cached row: within its TTL
    authenticator.invalidate(made.info.prefix)  # what the API does on revoke
    with pytest.raises(AuthError, match="was revoked"):
        anyio.run(authenticator.authenticate, f"Bearer {made.key}")


def test_usage_adds_up_and_unknown_energy_stays_unknown(db):
    bucket = UsageBucket(date(2030, 1, 2), 9001, 9002, "store-deployment", "store-tenant", "storeprefix1")
    usage.write_interval(db, {bucket: UsageCounts(requests=2, samples=5, errors=1, device_seconds=0.5)})
    usage.write_interval(db, {bucket: UsageCounts(requests=1, samples=1, device_seconds=0.25,
                                                  energy_joules=3.0)})
    usage.write_interval(db, {bucket: UsageCounts(requests=1, energy_joules_modelled=2.0)})
    (row,) = usage.query(db, deployment="store-deployment")
    assert (row.requests, row.samples, row.errors) == (4, 6, 1)
    assert row.device_seconds == pytest.approx(0.75)
    assert row.energy_joules == pytest.approx(3.0) and row.energy_joules_modelled == pytest.approx(2.0)
    assert row.tenant == "store-tenant" and row.key == "storeprefix1" and row.day == date(2030, 1, 2)
    assert usage.query(db, deployment="store-deployment", since=date(2030, 1, 3)) == []
    (total,) = usage.query(db, tenant="store-tenant", group_by=())
    assert total.requests == 4 and total.day is None


def test_the_first_start_key_is_made_once_per_database(db, gateway):
    # the session's gateway already made this database's bootstrap key at its first start
    assert store.bootstrap_admin_key(db, SECRET) is None


def test_websockets_are_authenticated_too(db):
    """No gateway route speaks WebSocket today; one added later must not be a way around keys."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from kcloud.tenancy.context import current_principal
    from kcloud.tenancy.middleware import TenancyMiddleware
    from kcloud.tenancy.service import Tenancy

    async def echo_role(websocket):
        await websocket.accept()
        await websocket.send_text(current_principal().role.value)
        await websocket.close()

    tenancy = Tenancy(db, server_secret=SECRET)
    app = Starlette(routes=[WebSocketRoute("/ws", echo_role)])
    app.add_middleware(TenancyMiddleware, tenancy=tenancy)
    made = store.create_key(db, SECRET, role=Role.READONLY, tenant=None, actor="test")
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {made.key}"}) as ws:
            assert ws.receive_text() == "readonly"


def test_usage_survives_a_failed_write(db, monkeypatch):
    """A database hiccup keeps the counted usage in memory for the next flush: nothing is lost."""
    from kcloud.tenancy import service as service_module
    from kcloud.tenancy.service import Tenancy

    tenancy = Tenancy(db, server_secret=SECRET)
    bucket = UsageBucket(date(2030, 2, 3), None, None, "flaky-deployment")
    tenancy.meter.record(bucket, samples=2)
    real_write = service_module.write_interval

    def failing(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(service_module, "write_interval", failing)
    assert tenancy.flush_usage() is False
    tenancy.meter.record(bucket, samples=1)
    monkeypatch.setattr(service_module, "write_interval", real_write)
    assert tenancy.flush_usage() is True
    (row,) = usage.query(db, deployment="flaky-deployment")
    assert row.requests == 2 and row.samples == 3
