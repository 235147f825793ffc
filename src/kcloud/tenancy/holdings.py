"""What a tenant holds, read through the control plane's read API (`kcloud.farm.reads`), and the
quota check at create/scale.

The control plane calls `enforce_deployment_quota` inside the transaction that creates or scales
a deployment, after placement decided the devices and before it commits: a refusal raises
`QuotaExceededError` (403, naming the limit) and the transaction rolls back, so nothing of the
refused change is left. The tenant's quota row is locked (`SELECT .. FOR UPDATE` on PostgreSQL;
SQLite serialises writers anyway), so two concurrent changes of one tenant cannot both pass.

Counted: desired replicas of all the tenant's deployments (the changed one at its new count),
and the distinct devices their active replicas sit on (the control plane's `ACTIVE_STATES`:
placed, starting, running; replicas being evicted or stopped are on their way out), with
each device's vendor and catalog compute. PF uses `kcloud.farm.capacity`'s figures.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcloud.devices.catalog import UnknownChipError, load_catalog
from kcloud.errors import NotFoundError
from kcloud.farm.capacity import FIGURES
from kcloud.farm.reads import deployments_of, device_chips
from kcloud.tenancy.errors import QuotaExceededError
from kcloud.tenancy.quotas import HeldDevice, Holding, QuotaLimits, check_holding
from kcloud.tenancy.schema import Tenant, TenantQuota
from kcloud.tenancy.store import _quota_view


def _held_devices(session: Session, uids: set[str], pf_figure: str) -> list[HeldDevice]:
    if not uids:
        return []
    known = device_chips(session, uids)
    catalog = load_catalog()
    figure = FIGURES[pf_figure][2]  # type: ignore[index]
    held = []
    for uid in sorted(uids):
        vendor, chip = known.get(uid, ("unknown", None))
        pf: float | None = None
        if chip is not None:
            try:
                pf = figure(catalog.get(chip))
            except UnknownChipError:
                pf = None
        held.append(HeldDevice(uid=uid, vendor=vendor, pf=pf))
    return held


def tenant_holding(
    session: Session,
    tenant: str,
    *,
    pf_figure: str = "fp16_bf16_pflops",
    replace: tuple[str, int, Sequence[str]] | None = None,
) -> Holding:
    """What `tenant` holds now, or would hold if deployment `replace[0]` had `replace[1]` replicas
    on devices `replace[2]`."""
    holding = Holding()
    device_uids: set[str] = set()
    for deployment in deployments_of(session, tenant):
        if replace is not None and deployment.name == replace[0]:
            continue
        holding.replicas += deployment.replicas
        device_uids.update(deployment.device_uids)
    if replace is not None:
        holding.replicas += replace[1]
        device_uids.update(replace[2])
    for device in _held_devices(session, device_uids, pf_figure):
        holding.devices[device.uid] = device
    return holding


def enforce_deployment_quota(
    session: Session,
    *,
    tenant: str | None,
    deployment: str,
    replicas: int,
    device_uids: Sequence[str],
) -> None:
    """Refuse (QuotaExceededError, 403) a create or scale that takes `tenant` over its quota.

    `replicas` is the deployment's desired count after the change; `device_uids` the devices its
    replicas are placed on after it (one per placed replica; repeats are fine). An admin's own
    deployment (`tenant` None) has no quota. An unknown tenant is refused (NotFoundError, 404).
    """
    if tenant is None:
        return
    tenant_row = session.scalar(select(Tenant).where(Tenant.name == tenant))
    if tenant_row is None:
        raise NotFoundError(f"tenant {tenant!r} not found; create it first (kcloud tenants create {tenant})")
    quota_row = session.scalar(
        select(TenantQuota).where(TenantQuota.tenant_id == tenant_row.id).with_for_update()
    )
    limits: QuotaLimits = _quota_view(quota_row)
    after = tenant_holding(session, tenant, pf_figure=limits.pf_figure,
                           replace=(deployment, replicas, list(device_uids)))
    violation = check_holding(tenant, limits, after)
    if violation is not None:
        raise QuotaExceededError(
            f"quota exceeded: {violation.reason} (deployment {deployment!r})",
            limit=violation.limit, allowed=violation.allowed, requested=violation.requested,
        )
