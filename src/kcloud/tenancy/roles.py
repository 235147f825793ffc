"""Roles and the principal a request acts as.

Three roles, and what each may do:

- `admin` (the whole farm; an admin key belongs to no tenant): everything — tenants, keys,
  quotas, every deployment, usage, audit.
- `member` (one tenant): see and call its tenant's deployments; create and scale them within the
  quota; manage its tenant's member and read-only keys; see its usage and audit entries.
- `readonly` (one tenant, or the whole farm when made without one): list and see (deployments,
  models, metadata, usage) — no changes and **no inference**.

Why read-only cannot infer: inference spends the tenant's devices, rate limit and bill, which is
an action with a cost, not a look. A read-only key is for dashboards, billing and auditors; a
leaked one must not be able to run up usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READONLY = "readonly"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key that authenticated it, its role and its tenant scope.

    `tenant_id` is None for farm-wide principals (admins, farm-wide read-only keys, and the
    insecure no-auth mode, which acts as an admin).
    """

    key_id: int | None
    key_prefix: str | None
    role: Role
    tenant_id: int | None
    tenant_name: str | None = None
    insecure: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def can_infer(self) -> bool:
        return self.role is not Role.READONLY

    @property
    def can_change(self) -> bool:
        return self.role is not Role.READONLY

    @property
    def farm_wide(self) -> bool:
        return self.tenant_id is None

    def sees(self, owner: str | None) -> bool:
        """Whether this principal may see what tenant `owner` owns (None: the operator's own).

        Deployments name their owner by tenant name, which is unique and never changes."""
        if self.tenant_id is None:
            return True
        return owner is not None and owner == self.tenant_name

    @property
    def label(self) -> str:
        """Names the actor in logs and the audit trail, never the secret."""
        if self.insecure:
            return "insecure-no-auth"
        return f"key:{self.key_prefix}" if self.key_prefix else "system"


#: The principal of internal work (bootstrap, background jobs); never given to an HTTP request.
SYSTEM = Principal(key_id=None, key_prefix=None, role=Role.ADMIN, tenant_id=None)
#: What every request acts as when the server runs with `--insecure-no-auth`.
INSECURE = Principal(key_id=None, key_prefix=None, role=Role.ADMIN, tenant_id=None, insecure=True)
