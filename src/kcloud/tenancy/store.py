"""Tenants, keys and quotas in the database: the operations the API and the server's start call.

Every write runs in one `Database.transaction()`, so a refused request leaves nothing behind.
Functions return plain views (pydantic), never live ORM objects, so callers on other threads or
after the session closed cannot trip over lazy loading.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kcloud.errors import ConflictError, InvalidRequestError, NotFoundError
from kcloud.farm.reads import count_deployments_of, reservations
from kcloud.farm.spec import ReservationView
from kcloud.store.base import utcnow
from kcloud.store.db import Database
from kcloud.tenancy.keys import generate_key
from kcloud.tenancy.quotas import QuotaLimits
from kcloud.tenancy.roles import Role
from kcloud.tenancy.schema import TENANT_NAME_PATTERN, ApiKey, Tenant, TenantQuota

_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)


class TenantView(BaseModel):
    id: int
    name: str
    description: str | None
    created_at: datetime
    created_by: str
    quota: QuotaLimits
    #: Devices and nodes set aside for the tenant (its virtual cluster); empty: it shares the farm.
    reservations: list[ReservationView] = []


class KeyView(BaseModel):
    """A key as listings show it: everything but the secret (which is never stored)."""

    id: int
    prefix: str
    name: str | None
    role: Role
    tenant: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    requests_per_second: float | None
    burst: int | None
    #: The key's own token limits (its tenant's quota applies besides); None: none of its own.
    tokens_per_minute: int | None
    tokens_per_day: int | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


class CreatedKey(BaseModel):
    """The answer to creating a key: the only time `key` (the secret) is ever shown."""

    key: str
    info: KeyView


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"tenant name {name!r} must be 1-63 characters of lowercase letters, digits and '-', "
            f"starting with a letter or digit"
        )
    return name


def _quota_view(row: TenantQuota | None) -> QuotaLimits:
    if row is None:
        return QuotaLimits()
    # Not validated again: the request's bounds (`kcloud.farm.bounds`) are checked on the way in, and
    # a row that an older kcloud stored outside them (SQLite took any 64-bit cap) must still read back.
    return QuotaLimits.model_construct(
        max_replicas=row.max_replicas,
        max_devices=row.max_devices,
        max_devices_per_vendor=dict(row.max_devices_per_vendor or {}),
        max_pf=row.max_pf,
        pf_figure=row.pf_figure,
        requests_per_second=row.requests_per_second,
        burst=row.burst,
        max_concurrency=row.max_concurrency,
        tokens_per_minute=row.tokens_per_minute,
        tokens_per_day=row.tokens_per_day,
    )


def _tenant_view(row: Tenant, reserved: list[ReservationView]) -> TenantView:
    return TenantView(
        id=row.id, name=row.name, description=row.description, created_at=row.created_at,
        created_by=row.created_by, quota=_quota_view(row.quota), reservations=reserved,
    )


def _key_view(row: ApiKey) -> KeyView:
    return KeyView(
        id=row.id, prefix=row.prefix, name=row.name, role=Role(row.role),
        tenant=row.tenant.name if row.tenant is not None else None,
        created_at=row.created_at, created_by=row.created_by, expires_at=row.expires_at,
        revoked_at=row.revoked_at, revoked_by=row.revoked_by,
        requests_per_second=row.requests_per_second, burst=row.burst,
        tokens_per_minute=row.tokens_per_minute, tokens_per_day=row.tokens_per_day,
    )


def _tenant_row(session: Session, name: str, *, lock: bool = False) -> Tenant:
    query = select(Tenant).where(Tenant.name == name)
    row = session.scalar(query.with_for_update(of=Tenant) if lock else query)
    if row is None:
        raise NotFoundError(f"tenant {name!r} not found")
    return row


# -- tenants ---------------------------------------------------------------------------------


def create_tenant(
    db: Database, name: str, *, actor: str, description: str | None = None, quota: QuotaLimits | None = None
) -> TenantView:
    check_tenant_name(name)
    try:
        with db.transaction() as session:
            if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
                raise ConflictError(f"tenant {name!r} already exists")
            row = Tenant(name=name, description=description, created_by=actor)
            row.quota = _quota_row(quota or QuotaLimits())
            session.add(row)
            session.flush()
            return _tenant_view(row, reservations(session, name))
    except IntegrityError as exc:  # a concurrent create of the same name
        raise ConflictError(f"tenant {name!r} already exists") from exc


def list_tenants(db: Database) -> list[TenantView]:
    with db.session() as session:
        held: dict[str, list[ReservationView]] = {}
        for reservation in reservations(session):
            held.setdefault(reservation.tenant, []).append(reservation)
        return [_tenant_view(row, held.get(row.name, []))
                for row in session.scalars(select(Tenant).order_by(Tenant.name))]


def get_tenant(db: Database, name: str) -> TenantView:
    with db.session() as session:
        return _tenant_view(_tenant_row(session, name), reservations(session, name))


def delete_tenant(db: Database, name: str) -> None:
    """Delete a tenant with its keys and quota; refused while it owns deployments or holds
    reservations. Its row is locked first, so a reservation made for it meanwhile waits (and is
    then refused)."""
    with db.transaction() as session:
        row = _tenant_row(session, name, lock=True)
        owned = count_deployments_of(session, name)
        if owned:
            raise ConflictError(
                f"tenant {name!r} still owns {owned} deployment(s); delete them first"
            )
        held = [str(r.id) for r in reservations(session, name)]
        if held:
            raise ConflictError(
                f"tenant {name!r} still holds reservation(s) {', '.join(held)}; delete them first "
                f"(kcloud reservations delete ID)"
            )
        session.delete(row)


def _quota_row(limits: QuotaLimits) -> TenantQuota:
    row = TenantQuota()
    _fill_quota(row, limits)
    return row


def _fill_quota(row: TenantQuota, limits: QuotaLimits) -> None:
    row.max_replicas = limits.max_replicas
    row.max_devices = limits.max_devices
    row.max_devices_per_vendor = dict(limits.max_devices_per_vendor)
    row.max_pf = limits.max_pf
    row.pf_figure = limits.pf_figure
    row.requests_per_second = limits.requests_per_second
    row.burst = limits.burst
    row.max_concurrency = limits.max_concurrency
    row.tokens_per_minute = limits.tokens_per_minute
    row.tokens_per_day = limits.tokens_per_day


def set_quota(db: Database, name: str, limits: QuotaLimits) -> TenantView:
    """Replace the tenant's quota with `limits` (fields left out mean no cap)."""
    with db.transaction() as session:
        row = _tenant_row(session, name)
        if row.quota is None:
            row.quota = _quota_row(limits)
        else:
            _fill_quota(row.quota, limits)
        session.flush()
        return _tenant_view(row, reservations(session, name))


def tenant_quota(db: Database, name: str) -> QuotaLimits:
    return get_tenant(db, name).quota


# -- keys ------------------------------------------------------------------------------------


def create_key(
    db: Database,
    server_secret: bytes,
    *,
    role: Role,
    tenant: str | None,
    actor: str,
    name: str | None = None,
    expires_at: datetime | None = None,
    requests_per_second: float | None = None,
    burst: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    bootstrap: bool = False,
) -> CreatedKey:
    """Make a key; the returned `key` is the only copy of the secret there will ever be."""
    if role is Role.ADMIN and tenant is not None:
        raise InvalidRequestError(
            "an admin key belongs to no tenant (admins see the whole farm); drop the tenant")
    if role is Role.MEMBER and tenant is None:
        raise InvalidRequestError("a member key needs a tenant")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequestError(f"expiry {expires_at.isoformat()} is in the past")
    _check_key_limits(requests_per_second, burst, tokens_per_minute, tokens_per_day)
    new = generate_key(server_secret)
    with db.transaction() as session:
        tenant_row = _tenant_row(session, tenant) if tenant is not None else None
        row = ApiKey(
            prefix=new.prefix, digest=new.digest, name=name, role=role.value,
            tenant_id=tenant_row.id if tenant_row is not None else None,
            created_by=actor, expires_at=expires_at,
            requests_per_second=requests_per_second, burst=burst, tokens_per_minute=tokens_per_minute,
            tokens_per_day=tokens_per_day, bootstrap=bootstrap,
        )
        row.tenant = tenant_row
        session.add(row)
        session.flush()
        return CreatedKey(key=new.text, info=_key_view(row))


def _check_key_limits(
    requests_per_second: float | None, burst: int | None, tokens_per_minute: int | None,
    tokens_per_day: int | None,
) -> None:
    """The API's request models check these too; this is for callers in Python (the CLI's break-glass
    path, tests), so that no caller can store a limit the limiters cannot use."""
    if requests_per_second is not None and requests_per_second <= 0:
        raise InvalidRequestError("requests_per_second must be positive")
    if burst is not None and burst < 1:
        raise InvalidRequestError("burst must be at least 1")
    for name, value in (("tokens_per_minute", tokens_per_minute), ("tokens_per_day", tokens_per_day)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(f"{name} must be a whole number of tokens, at least 1; got {value!r}")


#: The limits of a key that `update_key_limits` may change.
KEY_LIMITS = ("requests_per_second", "burst", "tokens_per_minute", "tokens_per_day")


def update_key_limits(db: Database, prefix: str, changes: dict[str, Any]) -> KeyView:
    """Set the key's limits named in `changes` (None removes one); the others are kept.
    A revoked key's limits cannot change (nothing would use them)."""
    unknown = sorted(set(changes) - set(KEY_LIMITS))
    if unknown:
        raise InvalidRequestError(f"not a key limit: {', '.join(unknown)} (limits: {', '.join(KEY_LIMITS)})")
    with db.transaction() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            raise NotFoundError(f"no key with prefix {prefix!r}")
        if row.revoked_at is not None:
            raise ConflictError(f"key {prefix} was revoked at {row.revoked_at.isoformat()}; "
                                f"its limits no longer apply")
        merged = {name: getattr(row, name) for name in KEY_LIMITS} | changes
        _check_key_limits(**merged)
        for name, value in changes.items():
            setattr(row, name, value)
        session.flush()
        return _key_view(row)


def list_keys(db: Database, *, tenant: str | None = None) -> list[KeyView]:
    """Every key (of `tenant` when given), newest first, revoked and expired ones included."""
    with db.session() as session:
        query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        if tenant is not None:
            query = query.where(ApiKey.tenant_id == _tenant_row(session, tenant).id)
        return [_key_view(row) for row in session.scalars(query).unique()]


def get_key(db: Database, prefix: str) -> KeyView:
    with db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            raise NotFoundError(f"no key with prefix {prefix!r}")
        return _key_view(row)


def revoke_key(db: Database, prefix: str, *, actor: str) -> KeyView:
    """Revoke a key for good (its row stays, for the audit trail); revoking twice is refused."""
    with db.transaction() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            raise NotFoundError(f"no key with prefix {prefix!r}")
        if row.revoked_at is not None:
            raise ConflictError(f"key {prefix} was already revoked at {row.revoked_at.isoformat()}")
        row.revoked_at = utcnow()
        row.revoked_by = actor
        session.flush()
        return _key_view(row)


def bootstrap_admin_key(db: Database, server_secret: bytes) -> CreatedKey | None:
    """The first start's admin key, or None when this database has ever had one.

    "Ever": revoked bootstrap keys count too, so the key is printed once per database, never
    again, even after a restart or once it is revoked."""
    with db.session() as session:
        seen = session.scalar(select(ApiKey.id).where(ApiKey.bootstrap.is_(True)).limit(1))
    if seen is not None:
        return None
    return create_key(
        db, server_secret, role=Role.ADMIN, tenant=None, actor="system",
        name="bootstrap admin key (printed at first start)", bootstrap=True,
    )
