"""`Tenancy`: the running tenancy of one gateway process, and `attach`, which puts it on an app.

One object holds what the middleware, the scoped router and the admin API share: the database,
the server secret, the key cache, the rate and concurrency limiters, the token limiter (`tokens`,
whose day windows it seeds from the usage table at start), the usage meter and the ownership
snapshot. Background threads (not asyncio tasks: the server runs uvicorn with
`lifespan="off"`, and a thread needs no cooperation from the loop) refresh ownership every
`interval_s` and write usage every `usage_flush_s`; `close()` stops them and writes what is left.

**Usage durability.** Usage is what tenants are billed on, and a gateway can die without a
shutdown (SIGKILL, the machine). Counted usage is written every `usage_flush_s`, 100 ms by default
(`$KCLOUD_USAGE_FLUSH_MS`), so a crash loses at most the requests answered in the last interval
plus those of a write in progress. `usage_before_ack` (`KCLOUD_USAGE_DURABILITY=before-ack`) loses
none: a metered request's answer waits until its usage is committed, the requests waiting
together sharing one transaction (group commit). benchmarks/usage_durability.py measures both
(2-core machine, 2 rounds): a SIGKILL under ~4,000 requests/s lost 85-94 ms of traffic on SQLite
and 9-10 ms on PostgreSQL with the 100 ms interval (350-670 ms with the old 2 s), none before
acknowledging. The 100 ms interval cost 3-5 % of the gateway's own ceiling (`noop`, 64 clients,
about this machine's noise); waiting for the commit cost 12-13 %. MiniLM showed neither beyond
noise. Hence the interval by default, and the write before acknowledging for who must lose none.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI

from kcloud.home import kcloud_home
from kcloud.store.db import Database
from kcloud.tenancy import audit, store
from kcloud.tenancy.auth import DEFAULT_TTL_S, Authenticator
from kcloud.tenancy.context import RequestContext
from kcloud.tenancy.isolation import Ownership, TenantScopedRouter, load_ownership
from kcloud.tenancy.keys import load_server_secret, prefix_cache_salt
from kcloud.tenancy.metering import ENERGY_INTERVAL_S, UsageMeter, utc_day
from kcloud.tenancy.middleware import INSECURE_HEADER, TenancyMiddleware
from kcloud.tenancy.ratelimit import ConcurrencyLimiter, KeyRateLimiter
from kcloud.tenancy.tokens import TokenLimiter
from kcloud.tenancy.usage import inventory_energy_reader, tokens_used_on, write_interval

if TYPE_CHECKING:
    from kcloud.devices.inventory import Inventory

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
#: How often counted usage is written: a crash loses at most about this much of it.
DEFAULT_USAGE_FLUSH_S = 0.1
#: Environment variable that sets the usage write interval, in milliseconds.
USAGE_FLUSH_ENV = "KCLOUD_USAGE_FLUSH_MS"
#: Environment variable choosing when usage is written: `interval` (default) or `before-ack`.
USAGE_DURABILITY_ENV = "KCLOUD_USAGE_DURABILITY"
USAGE_DURABILITIES = ("interval", "before-ack")
#: The control plane's deployments API: a change there changes who owns which served model.
DEPLOYMENTS_PATH = "/api/v1/deployments"
INSECURE_BANNER = (
    "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach this port acts as an admin. "
    "Every response carries 'X-Kcloud-Insecure: auth-disabled'."
)


class Tenancy:
    def __init__(
        self,
        db: Database,
        *,
        server_secret: bytes | None = None,
        inventory: Inventory | None = None,
        insecure: bool = False,
        interval_s: float = DEFAULT_INTERVAL_S,
        key_cache_ttl_s: float = DEFAULT_TTL_S,
        usage_flush_s: float | None = None,
        usage_before_ack: bool | None = None,
    ) -> None:
        self.db = db
        self.server_secret = server_secret if server_secret is not None else load_server_secret(kcloud_home())
        self.insecure = insecure
        self.interval_s = interval_s
        #: Seconds between usage writes (None: `$KCLOUD_USAGE_FLUSH_MS`, else `DEFAULT_USAGE_FLUSH_S`).
        self.usage_flush_s = usage_flush_s if usage_flush_s is not None else _usage_flush_from_env()
        #: Whether a metered request's answer waits for its usage to be committed.
        self.usage_before_ack = (usage_before_ack if usage_before_ack is not None
                                 else _usage_durability_from_env() == "before-ack")
        self.authenticator = Authenticator(db, self.server_secret, ttl_s=key_cache_ttl_s)
        self.rate_limiter = KeyRateLimiter()
        self.concurrency = ConcurrencyLimiter()
        #: Token quotas of the LLM routes: `tokens.admit(ctx)` before a generation, `tokens.charge(ctx,
        #: prompt_tokens, completion_tokens)` when it ends (`kcloud.tenancy.tokens`).
        self.tokens = TokenLimiter()
        self.meter = UsageMeter(inventory_energy_reader(inventory) if inventory is not None else None)
        if inventory is not None:
            self.meter.prime(d.uid for d in inventory)
        self.ownership = Ownership()
        self._flush_lock = threading.Lock()
        self._ownership_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._usage_thread: threading.Thread | None = None
        #: Set when a request waits for its usage to be written (and at close), to write now.
        self._usage_wake = threading.Event()
        self._usage_waiters_lock = threading.Lock()
        #: Requests waiting for the next usage write: (their loop, their future).
        self._usage_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._energy_at = time.monotonic()
        self._closed = False
        #: Whether `close()` closes the database too (attach opened it, rather than sharing one).
        self.owns_db = False
        self.refresh_ownership()
        self.seed_token_windows()

    # -- background work -----------------------------------------------------------------------
    def start(self) -> Tenancy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kcloud-tenancy", daemon=True)
            self._thread.start()
            # its own thread, so that a slow ownership read never delays a usage write
            self._usage_thread = threading.Thread(target=self._run_usage, name="kcloud-usage", daemon=True)
            self._usage_thread.start()
            atexit.register(self.close)
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh_ownership()

    def _run_usage(self) -> None:
        """Write usage every `usage_flush_s`, counted from each write's start (so the interval does
        not stretch by the write's own time), and at once when a request waits for it."""
        next_at = time.monotonic() + self.usage_flush_s
        while not self._stop.is_set():
            self._usage_wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            self._usage_wake.clear()
            now = time.monotonic()
            next_at = max(next_at + self.usage_flush_s, now) if now >= next_at else next_at
            # energy every ENERGY_INTERVAL_S only: it reads every device's counter
            self._write_for_waiters(attribute_energy=now - self._energy_at >= ENERGY_INTERVAL_S)

    def _write_for_waiters(self, *, attribute_energy: bool = True) -> None:
        """One usage write, then wake the requests that waited for it. The waiters are taken before
        the counters, so the usage of every one of them is in this write."""
        with self._usage_waiters_lock:
            waiters, self._usage_waiters = self._usage_waiters, []
        try:
            self.flush_usage(attribute_energy=attribute_energy)
        finally:
            # A failed write keeps the usage in memory for the next try (`flush_usage`); the
            # requests are answered all the same rather than failed for the database's sake.
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for loop, future in waiters:
                by_loop.setdefault(loop, []).append(future)
            for loop, futures in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, futures)

    async def usage_written(self) -> None:
        """Return once the usage counted so far (this request's included) is in the database.

        With the background thread not running (a `Tenancy` used without `start()`), writes here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._usage_waiters_lock:  # atomic with `close` setting `_stop`: no waiter is left behind
            queued = self._usage_thread is not None and not self._stop.is_set()
            if queued:
                self._usage_waiters.append((loop, future))
        if not queued:
            await anyio.to_thread.run_sync(self.flush_usage)
            return
        self._usage_wake.set()
        await future

    def close(self) -> None:
        """Stop the background threads and write the usage still in memory (idempotent)."""
        with self._usage_waiters_lock:
            self._stop.set()
        self._usage_wake.set()
        for thread in (self._thread, self._usage_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        self._write_for_waiters()
        if self.owns_db and not self._closed:
            self.db.close()
        self._closed = True

    def refresh_ownership(self) -> None:
        # One reader at a time, so a snapshot read earlier can never replace one read later.
        with self._ownership_lock:
            try:
                self.ownership.replace(load_ownership(self.db))
            except Exception as exc:  # keep the last snapshot; the next tick retries
                log.warning("could not refresh deployment ownership: %s", exc)

    def seed_token_windows(self) -> None:
        """Count today's tokens, as the usage table has them, against the day windows of the keys and
        tenants that used them, so a restart does not hand out a fresh daily token quota. A
        failure is logged and leaves the windows empty (serving matters more than the quota)."""
        day = utc_day()
        try:
            per_key, per_tenant = tokens_used_on(self.db, day)
        except Exception as exc:
            log.warning("could not read today's token usage; daily token quotas start from 0: %s", exc)
            return
        self.tokens.seed_day(day, per_key, per_tenant)

    def flush_usage(self, *, attribute_energy: bool = True) -> bool:
        """Write the usage counted since the last flush; on failure keep it for the next try.
        With `attribute_energy` (as for a usage query, which must see everything up to now), the
        devices' energy since the last attribution too; the background writes ask for it only
        every `ENERGY_INTERVAL_S`."""
        with self._flush_lock:
            if attribute_energy:
                self._energy_at = time.monotonic()
            interval = self.meter.take_interval(attribute_energy=attribute_energy)
            if not interval:
                return True
            try:
                write_interval(self.db, interval)
            except Exception as exc:
                log.error("could not write usage (kept in memory for the next try): %s", exc)
                self.meter.restore(interval)
                return False
            return True

    # -- helpers for the middleware and the admin API --------------------------------------------
    async def audit_request(self, ctx: RequestContext, method: str, path: str, status: int) -> None:
        """Write the audit row of a change (before its answer leaves); after a deployment changed,
        also re-read who owns what, so its owner can call it (and nobody else can) at once."""
        if path.startswith(DEPLOYMENTS_PATH) and status < 400:
            await anyio.to_thread.run_sync(self.refresh_ownership)
        try:
            await anyio.to_thread.run_sync(lambda: audit.record(
                self.db, ctx.principal, action=ctx.audit_action or f"{method} {path}",
                target=ctx.audit_target, method=method, path=path, status=status, detail=ctx.audit_detail,
            ))
        except Exception:  # the action happened; losing its audit row must be loud, not a 500
            log.exception("AUDIT LOG WRITE FAILED for %s %s by %s (status %s)", method, path,
                          ctx.principal.label, status)

    def key_changed(self, prefix: str | None = None) -> None:
        """Drop cached key rows (one key, or all after a quota change) so the change applies now."""
        self.authenticator.invalidate(prefix)

    def bootstrap(self) -> str | None:
        """The first start's admin key (printed once by the caller), or None if one was ever made."""
        created = store.bootstrap_admin_key(self.db, self.server_secret)
        if created is None:
            return None
        from kcloud.tenancy.roles import SYSTEM

        audit.record(self.db, SYSTEM, action="key.bootstrap", target=created.info.prefix,
                     detail={"role": "admin"})
        return created.key


def attach(
    app: FastAPI,
    db: Database | str | None = None,
    *,
    inventory: Inventory | None = None,
    insecure: bool = False,
    announce: Callable[[str], None] | None = None,
    server_secret: bytes | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    **options: Any,
) -> Tenancy:
    """Put tenancy on a gateway app made by `kcloud.serving.gateway.create_app` (before it serves).

    - wraps the gateway's router in a `TenantScopedRouter` (isolation, metering, token quotas);
    - adds the tenancy admin API (`/api/v1/tenants|keys|usage|audit|whoami|reservations`);
    - adds the middleware (outermost, so nothing runs before authentication);
    - on the database's first start, creates the admin key and hands it to `announce` once;
    - with `insecure`, announces loudly that authentication is off.

    `db` is the control plane's `Database` (share it), or a URL / None to open one (None: the
    embedded SQLite file, or `$KCLOUD_DB_URL`). Raises `kcloud.store.db.DatabaseError` or
    `kcloud.tenancy.keys.ServerSecretError` (one clear line each) before changing the app.
    Returns the `Tenancy`; call its `close()` at shutdown to write the last usage counters.
    """
    from kcloud.store.db import open_database
    from kcloud.tenancy.api import tenancy_router
    from kcloud.tenancy.reservations import reservations_router

    owns_db = not isinstance(db, Database)
    if not isinstance(db, Database):
        db = open_database(db)
    try:
        tenancy = Tenancy(db, server_secret=server_secret, inventory=inventory, insecure=insecure,
                          interval_s=interval_s, **options)
    except BaseException:
        if owns_db:
            db.close()
        raise
    tenancy.owns_db = owns_db
    app.state.tenancy = tenancy
    state = app.state.gateway
    if not isinstance(state.router, TenantScopedRouter):
        secret = tenancy.server_secret
        state.router = TenantScopedRouter(state.router, tenancy.ownership, tokens=tenancy.tokens,
                                          prefix_salt=lambda tenant: prefix_cache_salt(secret, tenant))
    app.include_router(tenancy_router())
    app.include_router(reservations_router())
    app.add_middleware(TenancyMiddleware, tenancy=tenancy)
    if not insecure:
        _document_refusals(app)
    say = announce or _print_stderr
    if insecure:
        log.warning(INSECURE_BANNER)
        say(INSECURE_BANNER)
    else:
        key = tenancy.bootstrap()
        if key is not None:
            say(
                "Admin API key (shown ONCE, never again; store it now):\n\n"
                f"    {key}\n\n"
                f"    export KCLOUD_API_KEY={key}\n"
            )
    tenancy.start()
    return tenancy


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class UsageSettingsError(ValueError):
    """A `$KCLOUD_USAGE_*` setting that makes no sense; `kcloud up` says so in one line."""


def check_usage_settings() -> None:
    """Raise `UsageSettingsError` now, before a server starts, for a bad `$KCLOUD_USAGE_*`."""
    _usage_flush_from_env()
    _usage_durability_from_env()


def _usage_flush_from_env() -> float:
    """`$KCLOUD_USAGE_FLUSH_MS` in seconds, else `DEFAULT_USAGE_FLUSH_S`; nonsense is refused loudly."""
    text = os.environ.get(USAGE_FLUSH_ENV, "").strip()
    if not text:
        return DEFAULT_USAGE_FLUSH_S
    try:
        milliseconds = float(text)
    except ValueError:
        raise UsageSettingsError(f"{USAGE_FLUSH_ENV}={text!r} is not a number of milliseconds") from None
    if not 1 <= milliseconds <= 60_000:
        raise UsageSettingsError(f"{USAGE_FLUSH_ENV}={text!r} must be between 1 and 60000 (ms)")
    if milliseconds > DEFAULT_USAGE_FLUSH_S * 1000:
        log.warning("%s=%s: a crash can lose up to %s ms of usage (default %d ms)", USAGE_FLUSH_ENV,
                    text, text, DEFAULT_USAGE_FLUSH_S * 1000)
    return milliseconds / 1000


def _usage_durability_from_env() -> str:
    chosen = os.environ.get(USAGE_DURABILITY_ENV, "").strip() or "interval"
    if chosen not in USAGE_DURABILITIES:
        raise UsageSettingsError(f"{USAGE_DURABILITY_ENV}={chosen!r}: expected one of "
                         f"{', '.join(USAGE_DURABILITIES)}")
    return chosen


def _document_refusals(app: FastAPI) -> None:
    """Put the middleware's refusals in the OpenAPI document: it makes them before any route runs,
    so no route declares them (`kcloud.serving.gateway.openapi.document_everywhere`)."""
    from kcloud.serving.gateway.openapi import document_everywhere
    from kcloud.tenancy.middleware import FARM_WIDE_PATHS, PUBLIC_PATHS, SAFE_METHODS

    def guarded(method: str, path: str) -> bool:
        return path not in PUBLIC_PATHS

    def read_only_refused(method: str, path: str) -> bool:
        return (guarded(method, path) and method not in SAFE_METHODS) or path in FARM_WIDE_PATHS

    document_everywhere(app, 401, "no API key, or one that is unknown, revoked or expired", guarded)
    document_everywhere(app, 403, "this key may not: a read-only key only reads, and farm-wide routes "
                                  "need an admin or farm-wide key", read_only_refused)
    document_everywhere(app, 429, "the key's rate limit, its tenant's concurrency cap, or (LLM routes) a "
                                  "token quota of the key or tenant; see Retry-After", guarded)


def _print_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def console_announcer(console: Any) -> Callable[[str], None]:
    """What `kcloud up` passes as `announce`: the insecure warning in a red panel; the admin key as
    plain unwrapped lines (a panel would wrap a long key and break copying it)."""
    from rich.panel import Panel

    def announce(text: str) -> None:
        if text.startswith("AUTHENTICATION IS OFF"):
            console.print(Panel(text, title="INSECURE", border_style="bold red"))
            return
        console.rule("[bold yellow]kcloud tenancy[/bold yellow]", style="yellow")
        console.print(text, soft_wrap=True, highlight=False, markup=False)
        console.rule(style="yellow")

    return announce


__all__ = ["INSECURE_HEADER", "Tenancy", "attach", "console_announcer"]
