"""The audit log: every change made through the admin API, with who, what, when and the outcome.

The middleware writes one row for every state-changing request (POST, PUT, PATCH, DELETE) under
`/api/`, refused ones included, before the response leaves: a client that saw its answer can
read the row. Handlers name their action (`tenant.create`, `key.revoke`, ...) and add details
through `kcloud.tenancy.context.RequestContext.audit`; routes that do not (the control plane's
deployments API) are logged by method and path. Secrets never reach the log: a created key is
logged by its prefix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from kcloud.store.db import Database
from kcloud.tenancy.roles import Principal
from kcloud.tenancy.schema import AuditRow

MAX_LIMIT = 1000


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_role: str | None
    actor_tenant: str | None
    action: str
    target: str | None
    method: str | None
    path: str | None
    status: int | None
    detail: dict[str, Any] | None


def record(
    db: Database,
    principal: Principal,
    *,
    action: str,
    target: str | None = None,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    with db.transaction() as session:
        session.add(AuditRow(
            actor=principal.label, actor_role=principal.role.value, actor_tenant=principal.tenant_name,
            action=action[:128], target=None if target is None else target[:255],
            method=method, path=None if path is None else path[:1024], status=status, detail=detail,
        ))


def query(
    db: Database,
    *,
    tenant: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first. `tenant` keeps the actions of that tenant's keys."""
    statement = select(AuditRow).order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(min(limit, MAX_LIMIT))
    if tenant is not None:
        statement = statement.where(AuditRow.actor_tenant == tenant)
    if actor is not None:
        statement = statement.where(AuditRow.actor == actor)
    if action is not None:
        statement = statement.where(AuditRow.action == action)
    if since is not None:
        statement = statement.where(AuditRow.at >= since)
    if until is not None:
        statement = statement.where(AuditRow.at < until)
    with db.session() as session:
        return [AuditEntry.model_validate(row, from_attributes=True) for row in session.scalars(statement)]
