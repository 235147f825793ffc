"""`Tenancy`: the running tenancy of one gateway process, and `attach`, which puts it on an app.

One object holds what the middleware, the scoped router and the admin API share: the database,
the server secret, the key cache, the rate and concurrency limiters, the usage meter and the
ownership snapshot. A background thread (not an asyncio task: the server runs uvicorn with
`lifespan="off"`, and a thread needs no cooperation from the loop) refreshes ownership and
flushes usage every `interval_s`; `close()` stops it and writes what is left.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI, Request
from starlette.responses import Response

from kcloud.farm.db import Database
from kcloud.home import kcloud_home
from kcloud.serving.gateway.errors import error_body
from kcloud.tenancy import audit, store
from kcloud.tenancy.auth import DEFAULT_TTL_S, Authenticator
from kcloud.tenancy.context import RequestContext
from kcloud.tenancy.errors import QuotaExceededError, TenancyError
from kcloud.tenancy.isolation import Ownership, TenantScopedRouter, load_ownership
from kcloud.tenancy.keys import load_server_secret
from kcloud.tenancy.metering import UsageMeter
from kcloud.tenancy.middleware import INSECURE_HEADER, TenancyMiddleware
from kcloud.tenancy.ratelimit import ConcurrencyLimiter, KeyRateLimiter
from kcloud.tenancy.usage import inventory_energy_reader, write_interval

if TYPE_CHECKING:
    from kcloud.farm.inventory import Inventory

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
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
    ) -> None:
        self.db = db
        self.server_secret = server_secret if server_secret is not None else load_server_secret(kcloud_home())
        self.insecure = insecure
        self.interval_s = interval_s
        self.authenticator = Authenticator(db, self.server_secret, ttl_s=key_cache_ttl_s)
        self.rate_limiter = KeyRateLimiter()
        self.concurrency = ConcurrencyLimiter()
        self.meter = UsageMeter(inventory_energy_reader(inventory) if inventory is not None else None)
        if inventory is not None:
            self.meter.prime(d.uid for d in inventory)
        self.ownership = Ownership()
        self._flush_lock = threading.Lock()
        self._ownership_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Whether `close()` closes the database too (attach opened it, rather than sharing one).
        self.owns_db = False
        self.refresh_ownership()

    # -- background work -----------------------------------------------------------------------
    def start(self) -> Tenancy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kcloud-tenancy", daemon=True)
            self._thread.start()
            atexit.register(self.close)
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh_ownership()
            self.flush_usage()

    def close(self) -> None:
        """Stop the background thread and write the usage still in memory (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self.flush_usage()
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

    def flush_usage(self) -> bool:
        """Write the usage counted since the last flush; on failure keep it for the next try."""
        with self._flush_lock:
            interval = self.meter.take_interval()
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


def install_error_handler(app: FastAPI) -> None:
    """Answer tenancy's refusals as `{"error": ...}` with their status (and the quota's numbers)."""

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TenancyError)
        import orjson

        if isinstance(exc, QuotaExceededError) and not request.url.path.startswith("/v1/"):
            body = orjson.dumps({"error": str(exc), "limit": exc.limit, "allowed": exc.allowed,
                                 "requested": exc.requested})
        else:
            body = error_body(request.url.path, exc.status, str(exc))
        return Response(body, status_code=exc.status, media_type="application/json")

    app.add_exception_handler(TenancyError, refused)


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

    - wraps the gateway's router in a `TenantScopedRouter` (isolation and metering);
    - adds the tenancy admin API (`/api/v1/tenants|keys|usage|audit|whoami`);
    - adds the middleware (outermost, so nothing runs before authentication);
    - on the database's first start, creates the admin key and hands it to `announce` once;
    - with `insecure`, announces loudly that authentication is off.

    `db` is the control plane's `Database` (share it), or a URL / None to open one (None: the
    embedded SQLite file, or `$KCLOUD_DB_URL`). Raises `kcloud.farm.db.DatabaseError` or
    `kcloud.tenancy.keys.ServerSecretError` (one clear line each) before changing the app.
    Returns the `Tenancy`; call its `close()` at shutdown to write the last usage counters.
    """
    from kcloud.farm.db import open_database
    from kcloud.tenancy.api import tenancy_router

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
        state.router = TenantScopedRouter(state.router, tenancy.ownership)
    app.include_router(tenancy_router())
    install_error_handler(app)
    app.add_middleware(TenancyMiddleware, tenancy=tenancy)
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


__all__ = ["INSECURE_HEADER", "Tenancy", "attach", "console_announcer", "install_error_handler"]
