"""The tenancy admin API under `/api/v1`: tenants, quotas, keys, usage, audit, whoami.

Who may do what (the middleware already refused read-only keys anything but reads):
- admins: everything;
- members: read their own tenant, manage their tenant's member and read-only keys, read its usage
  and audit entries;
- a tenant's read-only key: read its own tenant, keys, usage and audit entries.
Anything of another tenant answers 404, as if it did not exist.

Handlers are `async` and push database work to a thread: they read the principal from the
request's context first (a context variable), then block nowhere on the event loop.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from kcloud.errors import ForbiddenError, InvalidRequestError, NotFoundError
from kcloud.farm.bounds import INTEGER_MAX, StorableBody
from kcloud.store.base import utcnow
from kcloud.tenancy import audit, store, usage
from kcloud.tenancy.audit import AuditEntry
from kcloud.tenancy.context import RequestContext, current_request
from kcloud.tenancy.quotas import QuotaLimits, TokenLimit
from kcloud.tenancy.roles import Role
from kcloud.tenancy.store import CreatedKey, KeyView, TenantView
from kcloud.tenancy.usage import ALL_DIMENSIONS, UsageRecord

PREFIX = "/api/v1"
#: What each refusal means here, for the OpenAPI document (the gateway adds the `{"error": ...}` body;
#: 400 for a malformed parameter or body is on every route that takes one, and tenancy's
#: middleware adds 401 and 429 to every route).
_REFUSALS: dict[int, str] = {
    400: "invalid request: a value the route refuses (the message names it)",
    403: "this key's role may not do this",
    404: "no such tenant or key (or one of another tenant: answered as if it did not exist)",
    409: "conflicts with what exists (already exists, already revoked, still owns deployments)",
}


def _refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers `statuses` besides its success."""
    return {status: {"description": _REFUSALS[status]} for status in statuses}


def _utc(value: datetime | None, name: str) -> datetime | None:
    """`value` in UTC. A date or a time without a zone (`2026-12-04`) is taken as UTC, as the usage
    days are; a time that leaves the calendar once moved to UTC (year 1 or 9999 with an offset) is a 400."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequestError(f"{name}: {value.isoformat()} is out of range in UTC") from None


class TenantCreate(StorableBody):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="lowercase letters, digits and '-', at most 63")
    description: str | None = None
    quota: QuotaLimits | None = None


class KeyLimits(StorableBody):
    """A change of a key's own limits: the fields sent are set (`null` removes one), the others kept.
    The tenant's quota applies besides (`PUT /tenants/{name}/quota`)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1, le=INTEGER_MAX)
    tokens_per_minute: TokenLimit | None = Field(
        default=None, description="LLM tokens (prompt + completion) per minute for this key")
    tokens_per_day: TokenLimit | None = Field(
        default=None, description="LLM tokens (prompt + completion) per UTC day for this key")


class KeyCreate(KeyLimits):
    """A new key; its own limits (`KeyLimits`) may be given at once."""

    role: Role = Role.MEMBER
    tenant: str | None = Field(default=None, description="required for member keys; admin keys have none")
    name: str | None = Field(default=None, max_length=255, description="a label, e.g. who or what uses it")
    expires_at: datetime | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("expires_at needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None


class Whoami(BaseModel):
    actor: str
    role: Role
    tenant: str | None
    insecure: bool


def _ctx(request: Request) -> RequestContext:
    ctx = current_request()
    if ctx is None:  # the middleware is missing: refuse rather than act unauthenticated
        raise ForbiddenError("no authenticated principal on this request (tenancy middleware not installed)")
    return ctx


def _tenancy(request: Request) -> Any:
    return request.app.state.tenancy


def _require_admin(ctx: RequestContext, what: str) -> None:
    if not ctx.principal.is_admin:
        raise ForbiddenError(f"only an admin may {what}")


def _scoped_tenant(ctx: RequestContext, asked: str | None) -> str | None:
    """The tenant a query is limited to: a tenant principal's own, whatever it asked for."""
    own = ctx.principal.tenant_name
    if ctx.principal.farm_wide:
        return asked
    if asked is not None and asked != own:
        raise NotFoundError(f"tenant {asked!r} not found")
    return own


async def _run(func: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))


def tenancy_router() -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["Tenancy (admin API)"])

    @api.get("/whoami", response_model=Whoami, summary="The principal this key acts as")
    async def whoami(request: Request) -> Whoami:
        p = _ctx(request).principal
        return Whoami(actor=p.label, role=p.role, tenant=p.tenant_name, insecure=p.insecure)

    # -- tenants -------------------------------------------------------------------------------
    @api.post("/tenants", response_model=TenantView, status_code=201, summary="Create a tenant",
              responses=_refusals(400, 403, 409))
    async def create_tenant(request: Request, body: TenantCreate) -> TenantView:
        ctx = _ctx(request)
        quota = body.quota.model_dump(exclude_none=True) if body.quota else None
        ctx.audit("tenant.create", body.name, quota=quota)
        _require_admin(ctx, "create tenants")
        return await _run(store.create_tenant, _tenancy(request).db, body.name, actor=ctx.principal.label,
                          description=body.description, quota=body.quota)

    @api.get("/tenants", response_model=list[TenantView], summary="List tenants")
    async def list_tenants(request: Request) -> list[TenantView]:
        ctx = _ctx(request)
        tenants = await _run(store.list_tenants, _tenancy(request).db)
        return [t for t in tenants if ctx.principal.sees(t.name)]

    @api.get("/tenants/{name}", response_model=TenantView, summary="Show a tenant and its quota",
             responses=_refusals(404))
    async def get_tenant(request: Request, name: str) -> TenantView:
        ctx = _ctx(request)
        if not ctx.principal.sees(name):
            raise NotFoundError(f"tenant {name!r} not found")
        return await _run(store.get_tenant, _tenancy(request).db, name)

    @api.delete("/tenants/{name}", status_code=204, summary="Delete a tenant (it must own no deployments)",
                responses=_refusals(403, 404, 409))
    async def delete_tenant(request: Request, name: str) -> Response:
        ctx = _ctx(request)
        ctx.audit("tenant.delete", name)
        _require_admin(ctx, "delete tenants")
        tenancy = _tenancy(request)
        await _run(store.delete_tenant, tenancy.db, name)
        tenancy.key_changed()
        return Response(status_code=204)

    @api.get("/tenants/{name}/quota", response_model=QuotaLimits, summary="A tenant's quota",
             responses=_refusals(404))
    async def get_quota(request: Request, name: str) -> QuotaLimits:
        ctx = _ctx(request)
        if not ctx.principal.sees(name):
            raise NotFoundError(f"tenant {name!r} not found")
        return await _run(store.tenant_quota, _tenancy(request).db, name)

    @api.put("/tenants/{name}/quota", response_model=TenantView, summary="Set a tenant's quota",
             responses=_refusals(403, 404))
    async def set_quota(request: Request, name: str, body: QuotaLimits) -> TenantView:
        ctx = _ctx(request)
        ctx.audit("quota.set", name, **body.model_dump(exclude_none=True))
        if not ctx.principal.sees(name):
            raise NotFoundError(f"tenant {name!r} not found")
        _require_admin(ctx, "set quotas")
        tenancy = _tenancy(request)
        view = await _run(store.set_quota, tenancy.db, name, body)
        tenancy.key_changed()  # rate limits and concurrency caps ride on the cached key rows
        return view

    # -- keys ----------------------------------------------------------------------------------
    @api.post("/keys", response_model=CreatedKey, status_code=201,
              summary="Create an API key (the key is in this answer only; it is never shown again)",
              responses=_refusals(400, 403, 404))
    async def create_key(request: Request, body: KeyCreate) -> CreatedKey:
        ctx = _ctx(request)
        p = ctx.principal
        tenant = body.tenant
        if not p.is_admin:
            if body.role is Role.ADMIN:
                raise ForbiddenError("only an admin may create admin keys")
            tenant = _scoped_tenant(ctx, tenant)
        if body.expires_at is not None and body.expires_in_days is not None:
            raise InvalidRequestError("give expires_at or expires_in_days, not both")
        expires_at = body.expires_at
        if body.expires_in_days is not None:
            expires_at = utcnow() + timedelta(days=body.expires_in_days)
        ctx.audit("key.create", None, role=body.role.value, tenant=tenant, name=body.name,
                  expires_at=expires_at.isoformat() if expires_at else None)
        created: CreatedKey = await _run(
            store.create_key, _tenancy(request).db, _tenancy(request).server_secret, role=body.role,
            tenant=tenant, actor=p.label, name=body.name, expires_at=expires_at,
            requests_per_second=body.requests_per_second, burst=body.burst,
            tokens_per_minute=body.tokens_per_minute, tokens_per_day=body.tokens_per_day,
        )
        ctx.audit_target = created.info.prefix
        return created

    @api.get("/keys", response_model=list[KeyView], summary="List API keys (never their secrets)",
             responses=_refusals(404))
    async def list_keys(request: Request, tenant: str | None = None) -> list[KeyView]:
        ctx = _ctx(request)
        scoped = _scoped_tenant(ctx, tenant)
        return await _run(store.list_keys, _tenancy(request).db, tenant=scoped)

    async def _visible_key(request: Request, ctx: RequestContext, prefix: str) -> KeyView:
        try:
            view: KeyView = await _run(store.get_key, _tenancy(request).db, prefix)
        except NotFoundError:
            raise NotFoundError(f"no key with prefix {prefix!r}") from None
        if not ctx.principal.farm_wide and view.tenant != ctx.principal.tenant_name:
            raise NotFoundError(f"no key with prefix {prefix!r}")
        return view

    @api.get("/keys/{prefix}", response_model=KeyView, summary="Show an API key", responses=_refusals(404))
    async def get_key(request: Request, prefix: str) -> KeyView:
        return await _visible_key(request, _ctx(request), prefix)

    @api.delete("/keys/{prefix}", response_model=KeyView, summary="Revoke an API key (for good)",
                responses=_refusals(403, 404, 409))
    async def revoke_key(request: Request, prefix: str) -> KeyView:
        ctx = _ctx(request)
        ctx.audit("key.revoke", prefix)
        view = await _visible_key(request, ctx, prefix)
        if view.role is Role.ADMIN and not ctx.principal.is_admin:
            raise ForbiddenError("only an admin may revoke admin keys")
        tenancy = _tenancy(request)
        revoked = await _run(store.revoke_key, tenancy.db, prefix, actor=ctx.principal.label)
        tenancy.key_changed(prefix)
        return revoked

    @api.patch("/keys/{prefix}", response_model=KeyView,
               summary="Change an API key's own limits (rate, burst, tokens per minute and per day)",
               responses=_refusals(400, 403, 404, 409))
    async def update_key_limits(request: Request, prefix: str, body: KeyLimits) -> KeyView:
        ctx = _ctx(request)
        changes = body.model_dump(include=body.model_fields_set)
        ctx.audit("key.limits", prefix, **changes)
        view = await _visible_key(request, ctx, prefix)
        if view.role is Role.ADMIN and not ctx.principal.is_admin:
            raise ForbiddenError("only an admin may change an admin key's limits")
        tenancy = _tenancy(request)
        updated = await _run(store.update_key_limits, tenancy.db, prefix, changes)
        tenancy.key_changed(prefix)  # the limiters read the limits from the cached key row
        return updated

    # -- usage and audit ----------------------------------------------------------------------
    @api.get("/usage", response_model=list[UsageRecord], summary="Usage per tenant, key, deployment and day",
             responses=_refusals(400, 404))
    async def get_usage(
        request: Request,
        tenant: str | None = None,
        key: Annotated[str | None, Query(description="key prefix")] = None,
        deployment: str | None = None,
        since: Annotated[date | None, Query(description="first day (UTC), inclusive")] = None,
        until: Annotated[date | None, Query(description="last day (UTC), inclusive")] = None,
        group_by: Annotated[str, Query(description="comma-separated: day, tenant, key, deployment")] =
            "day,tenant,key,deployment",
    ) -> list[UsageRecord]:
        ctx = _ctx(request)
        dims = tuple(d.strip() for d in group_by.split(",") if d.strip())
        unknown = [d for d in dims if d not in ALL_DIMENSIONS]
        if unknown:
            raise InvalidRequestError(f"group_by: unknown dimension(s) {', '.join(unknown)}; "
                                      f"choose from {', '.join(ALL_DIMENSIONS)}")
        if since is not None and until is not None and since > until:
            raise InvalidRequestError(f"since {since} is after until {until}")
        scoped = _scoped_tenant(ctx, tenant)
        tenancy = _tenancy(request)
        await anyio.to_thread.run_sync(tenancy.flush_usage)  # read what was served up to now
        return await _run(usage.query, tenancy.db, tenant=scoped, key=key, deployment=deployment,
                          since=since, until=until, group_by=dims)  # type: ignore[arg-type]

    @api.get("/audit", response_model=list[AuditEntry], summary="The audit log, newest first",
             responses=_refusals(400, 404))
    async def get_audit(
        request: Request,
        tenant: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: Annotated[datetime | None, Query(description=(
            "entries at or after this time; a date or a time without a zone is UTC"))] = None,
        until: Annotated[datetime | None, Query(description=(
            "entries before this time; a date or a time without a zone is UTC"))] = None,
        limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 100,
    ) -> list[AuditEntry]:
        ctx = _ctx(request)
        scoped = _scoped_tenant(ctx, tenant)
        start, end = _utc(since, "since"), _utc(until, "until")
        return await _run(audit.query, _tenancy(request).db, tenant=scoped, actor=actor, action=action,
                          since=start, until=end, limit=limit)

    return api
