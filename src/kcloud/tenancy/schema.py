"""Tenancy's tables, on the control plane's shared `Base`: tenants, API keys, quotas, usage, audit.

Created by the Alembic revision `0100_tenancy` (kcloud/store/migrations/versions), token limits and
token usage added by `0101_tokens`. A change here needs a new revision there.

Deployments name their owner by tenant *name* (`deployments.tenant`), which is unique and never
changes, so the control plane's tables need no foreign key into these. Usage and audit rows name
tenants and keys by value as well as by id: billing history and the audit trail must outlive the
deletion of the tenant or key they talk about.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kcloud.farm.names import TENANT_PART
from kcloud.store.base import Base, utcnow

#: Tenant names: DNS-label-like, so they fit in URLs, labels and file names unchanged; no `:`,
#: which starts a tenant's own name space of deployments (`kcloud.farm.names`).
TENANT_NAME_PATTERN = rf"^{TENANT_PART}$"
ROLES = ("admin", "member", "readonly")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))

    quota: Mapped[TenantQuota | None] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )
    keys: Mapped[list[ApiKey]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiKey(Base):
    """One API key. Only its HMAC digest is kept (see `kcloud.tenancy.keys`); `prefix` finds it."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'member', 'readonly')", name="role_known"),
        CheckConstraint("role != 'admin' OR tenant_id IS NULL", name="admin_has_no_tenant"),
        CheckConstraint("role != 'member' OR tenant_id IS NOT NULL", name="member_has_tenant"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_by: Mapped[str | None] = mapped_column(String(64))
    #: Per-key rate limit overriding the tenant quota's (None: the tenant's).
    requests_per_second: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None] = mapped_column(Integer)
    #: The key's own token limits (prompt + completion), beside its tenant's (None: no limit of its own).
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    #: The key printed by the first start of the embedded server (at most one such key, ever).
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False)

    tenant: Mapped[Tenant | None] = relationship(back_populates="keys", lazy="joined")


class TenantQuota(Base):
    """A tenant's caps; a NULL column means no cap. See `kcloud.tenancy.quotas.QuotaLimits`."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    max_replicas: Mapped[int | None] = mapped_column(Integer)
    max_devices: Mapped[int | None] = mapped_column(Integer)
    max_devices_per_vendor: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_pf: Mapped[float | None] = mapped_column(Float)
    pf_figure: Mapped[str] = mapped_column(String(32), default="fp16_bf16_pflops")
    requests_per_second: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    #: Tokens (prompt + completion) for all the tenant's keys together.
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    tenant: Mapped[Tenant] = relationship(back_populates="quota")


class UsageRow(Base):
    """Usage of one (day, tenant, key, deployment), added to by the usage flusher.

    `bucket` is those four joined into one non-null unique string, so that the flusher can add
    with one portable INSERT .. ON CONFLICT (a unique constraint over nullable columns would not
    conflict on NULLs).
    """

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(512), unique=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    tenant_name: Mapped[str | None] = mapped_column(String(63))
    key_id: Mapped[int | None] = mapped_column(Integer)
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    deployment: Mapped[str | None] = mapped_column(String(255), index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: Tokens of LLM generations (`kcloud.tenancy.tokens`); 0 for requests that generate none.
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Attributed from measured energy counters; None: no device used had one.
    energy_joules: Mapped[float | None] = mapped_column(Float)
    #: Attributed from modelled (emulated) devices' counters; kept apart, never summed with measured.
    energy_joules_modelled: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditRow(Base):
    """One admin action (every change through the admin API, and the server's own bootstrap)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: `key:<prefix>`, `system` (the server itself) or `insecure-no-auth`.
    actor: Mapped[str] = mapped_column(String(64), index=True)
    actor_role: Mapped[str | None] = mapped_column(String(16))
    actor_tenant: Mapped[str | None] = mapped_column(String(63), index=True)
    #: e.g. `tenant.create`, `key.revoke`, `quota.set`, `POST /api/v1/deployments`.
    action: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column()
