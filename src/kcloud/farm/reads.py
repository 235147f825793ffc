"""What the control plane's tables say, for the packages above farm (tenancy), as plain values.

Tenancy needs a few facts the control plane keeps (who owns which served name, what a tenant's
deployments hold, which devices are set aside for it) and must not depend on how farm lays out
its tables. These functions are the whole of that contract; they read inside the caller's
session, so a quota check sees the uncommitted change it is checking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kcloud.farm.reservations import reservation_views
from kcloud.farm.schema import Deployment, DeviceRow, ReplicaRow
from kcloud.farm.service import ACTIVE_STATES
from kcloud.farm.spec import ReservationView


@dataclass(frozen=True)
class TenantDeployment:
    """One of a tenant's deployments: its desired replicas and the devices its active ones hold."""

    name: str
    replicas: int
    device_uids: frozenset[str]


def served_name_owners(session: Session) -> dict[str, str | None]:
    """Every deployment's served name -> its tenant (None: the operator's)."""
    return dict(session.execute(select(Deployment.name, Deployment.tenant)).tuples().all())


def deployments_of(session: Session, tenant: str) -> list[TenantDeployment]:
    """The tenant's deployments, with the devices of their placed, starting or running replicas."""
    rows = session.execute(
        select(Deployment.id, Deployment.name, Deployment.replicas).where(Deployment.tenant == tenant)
    ).all()
    held: dict[int, set[str]] = {deployment_id: set() for deployment_id, _, _ in rows}
    if held:
        for deployment_id, uid in session.execute(
            select(ReplicaRow.deployment_id, ReplicaRow.device_uid).where(
                ReplicaRow.deployment_id.in_(list(held)), ReplicaRow.state.in_(ACTIVE_STATES))
        ):
            held[deployment_id].add(uid)
    return [TenantDeployment(name, replicas, frozenset(held[i])) for i, name, replicas in rows]


def count_deployments_of(session: Session, tenant: str) -> int:
    query = select(func.count()).select_from(Deployment).where(Deployment.tenant == tenant)
    return session.scalar(query) or 0


def device_chips(session: Session, uids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """device uid -> (vendor, catalog chip key or None), for the devices the control plane knows."""
    wanted = list(uids)
    if not wanted:
        return {}
    rows = session.execute(
        select(DeviceRow.uid, DeviceRow.vendor, DeviceRow.chip_key).where(DeviceRow.uid.in_(wanted)))
    return {uid: (vendor, chip) for uid, vendor, chip in rows}


def reservations(session: Session, tenant: str | None = None) -> list[ReservationView]:
    """The reservations of `tenant` (None: every tenant's), with the devices each covers now."""
    return reservation_views(session, tenant=tenant)
