"""Reservations: devices or whole nodes set aside for one tenant, its virtual cluster.

A reservation names devices (by uid) and/or nodes (a node covers every device on it, those that
join later too). Placement then keeps two rules (`kcloud.farm.placement`): a reserved device takes
replicas of its tenant only, and a tenant that holds reservations is placed only on them.

Reserving devices that already run replicas of other tenants (or the operator's) moves those
replicas off, as a drain does and through the same path: each is marked `evicting`, a replacement
is placed outside the reservation first, and only then is it stopped (or at once when no device
has room for the replacement, as a drain would). The tenant's own replicas outside its new
reservation keep running; its next placements (scale, update, failover) go inside. Deleting a
reservation moves nothing: its devices take anyone's replicas again.

The control plane does not know tenants (tenancy sits above it), so the caller checks that the
tenant exists through `check`, inside the same transaction; tenancy refuses to delete a tenant
that still holds a reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from kcloud.farm.errors import ConflictError, NotFoundError
from kcloud.farm.ledger import ACTIVE_STATES, Ledger
from kcloud.farm.placement import Reserved
from kcloud.farm.schema import Deployment, DeviceRow, NodeRow, ReplicaRow, ReservationRow, ReservationTarget
from kcloud.farm.spec import ReservationCreate, ReservationCreated, ReservationView

#: The placement trigger (and the events' word) for replicas moved off newly reserved devices.
TRIGGER = "reservation"


def reserved_sets(session: Session) -> list[Reserved]:
    """Every reservation, as placement sees it."""
    return [
        Reserved(
            id=row.id,
            tenant=row.tenant,
            devices=frozenset(t.device_uid for t in row.targets if t.device_uid is not None),
            nodes=frozenset(t.node for t in row.targets if t.node is not None),
        )
        for row in session.scalars(select(ReservationRow).order_by(ReservationRow.id))
    ]


def reservation_views(
    session: Session, *, tenant: str | None = None, ids: Iterable[int] | None = None
) -> list[ReservationView]:
    """Reservations (of `tenant`, or those of `ids`; else all), oldest first, with what each covers."""
    query = select(ReservationRow).order_by(ReservationRow.id)
    if tenant is not None:
        query = query.where(ReservationRow.tenant == tenant)
    if ids is not None:
        query = query.where(ReservationRow.id.in_(list(ids)))
    rows = session.scalars(query).all()
    nodes = {t.node for row in rows for t in row.targets if t.node is not None}
    on_node: dict[str, list[str]] = {}
    if nodes:
        for uid, node in session.execute(
            select(DeviceRow.uid, DeviceRow.node).where(DeviceRow.node.in_(nodes)).order_by(DeviceRow.uid)
        ):
            on_node.setdefault(node, []).append(uid)
    views = []
    for row in rows:
        devices = sorted(t.device_uid for t in row.targets if t.device_uid is not None)
        named_nodes = sorted(t.node for t in row.targets if t.node is not None)
        covers = set(devices).union(*(on_node.get(node, ()) for node in named_nodes))
        views.append(
            ReservationView(
                id=row.id,
                tenant=row.tenant,
                devices=devices,
                nodes=named_nodes,
                covers=sorted(covers),
                note=row.note,
                created_at=row.created_at,
                created_by=row.created_by,
            )
        )
    return views


def _not_found(reservation_id: int) -> NotFoundError:
    return NotFoundError(f"reservation {reservation_id} not found (see `kcloud reservations list`)")


def _names(values: Iterable[str]) -> str:
    shown = sorted(values)
    return ", ".join(shown[:10]) + (f" (and {len(shown) - 10} more)" if len(shown) > 10 else "")


class Reservations(Ledger):
    """Create, list and delete reservations; creating one moves other tenants' replicas off."""

    def reserve(
        self,
        spec: ReservationCreate,
        *,
        actor: str = "operator",
        check: Callable[[Session], None] | None = None,
    ) -> ReservationCreated:
        """Set `spec`'s devices and nodes aside for its tenant; refused (nothing written) when one
        is unknown (404) or already reserved (409). `check(session)` runs first, in the same
        transaction (tenancy's: the tenant exists)."""
        devices, nodes = sorted(set(spec.devices)), sorted(set(spec.nodes))
        with self.transaction() as session:
            if check is not None:
                check(session)
            device_nodes = dict(
                session.execute(select(DeviceRow.uid, DeviceRow.node).where(DeviceRow.uid.in_(devices))).all()
            )
            unknown = set(devices) - set(device_nodes)
            if unknown:
                raise NotFoundError(
                    f"unknown device(s): {_names(unknown)} (see `kcloud devices` or GET /api/v1/devices)"
                )
            known_nodes = set(session.scalars(select(NodeRow.name).where(NodeRow.name.in_(nodes))))
            if set(nodes) - known_nodes:
                raise NotFoundError(f"unknown node(s): {_names(set(nodes) - known_nodes)}")
            covers = set(devices) | set(
                session.scalars(select(DeviceRow.uid).where(DeviceRow.node.in_(nodes)))
            )
            self._refuse_overlap(session, covers, set(nodes) | set(device_nodes.values()), device_nodes)
            row = ReservationRow(tenant=spec.tenant, created_by=actor, note=spec.note)
            row.targets = [ReservationTarget(device_uid=uid) for uid in devices] + [
                ReservationTarget(node=node) for node in nodes
            ]
            session.add(row)
            session.flush()
            moving = self._move_others(session, covers, spec.tenant, row.id)
            what = "; ".join(
                part
                for part in (
                    f"device(s) {_names(devices)}" if devices else "",
                    f"node(s) {_names(nodes)}" if nodes else "",
                )
                if part
            )
            self._event(
                session,
                "reservation.created",
                f"reservation {row.id} for tenant {spec.tenant}: {what} ({len(covers)} device(s) now); "
                f"{len(moving)} replica(s) of others move off",
                data={"reservation": row.id, "tenant": spec.tenant, "devices": devices, "nodes": nodes,
                      "moving": moving, "by": actor},
            )
            self._changed()
            session.flush()
            view = reservation_views(session, ids=[row.id])[0]
            return ReservationCreated(**view.model_dump(), moving=moving)

    @staticmethod
    def _refuse_overlap(
        session: Session, covers: set[str], nodes: set[str], device_nodes: dict[str, str]
    ) -> None:
        """409 when a device it covers, or a node it names or that holds a device it names, is in
        a reservation already (this tenant's own included: one device, one reservation)."""
        taken = session.execute(
            select(ReservationTarget.device_uid, ReservationTarget.node, ReservationRow.id,
                   ReservationRow.tenant)
            .join(ReservationRow, ReservationTarget.reservation_id == ReservationRow.id)
            .where(or_(ReservationTarget.device_uid.in_(covers), ReservationTarget.node.in_(nodes)))
        ).all()
        if not taken:
            return
        clashes = []
        for uid, node, reservation, tenant in taken:
            whose = f"reservation {reservation} of tenant {tenant}"
            if uid is not None:
                clashes.append(f"device {uid} is in {whose}")
            else:
                named = sorted(d for d, n in device_nodes.items() if n == node)
                via = f" (which holds {_names(named)})" if named else ""
                clashes.append(f"node {node}{via} is in {whose}")
        raise ConflictError(
            f"already reserved: {'; '.join(sorted(clashes)[:10])}; a device can be in one reservation only "
            f"(see `kcloud reservations list`)"
        )

    def _move_others(self, session: Session, uids: set[str], tenant: str, reservation: int) -> list[str]:
        """Evict the active replicas on `uids` that are not `tenant`'s, as a drain does."""
        rows = session.execute(
            select(ReplicaRow, Deployment.name)
            .join(Deployment, ReplicaRow.deployment_id == Deployment.id)
            .where(
                ReplicaRow.device_uid.in_(uids),
                ReplicaRow.state.in_(ACTIVE_STATES),
                or_(Deployment.tenant.is_(None), Deployment.tenant != tenant),
            )
            .order_by(ReplicaRow.id)
        ).all()
        for replica, deployment in rows:
            replica.state = "evicting"
            self._triggers[replica.deployment_id] = TRIGGER
            self._event(
                session,
                "replica.evicting",
                f"{replica.id} leaves {replica.device_uid}: reserved for another tenant "
                f"(reservation {reservation}); a replacement is placed first",
                deployment=deployment,
                device=replica.device_uid,
                replica=replica.id,
            )
        return [replica.id for replica, _ in rows]

    def unreserve(self, reservation_id: int, *, actor: str = "operator") -> ReservationView:
        """Delete a reservation (404 if none); its devices take anyone's replicas again, and
        nothing moves. Returns what was deleted."""
        with self.transaction() as session:
            row = session.get(ReservationRow, reservation_id)
            if row is None:
                raise _not_found(reservation_id)
            view = reservation_views(session, ids=[reservation_id])[0]
            session.delete(row)
            self._event(
                session,
                "reservation.deleted",
                f"reservation {reservation_id} of tenant {view.tenant} deleted; its {len(view.covers)} "
                f"device(s) take any tenant's replicas again",
                data={"reservation": reservation_id, "tenant": view.tenant, "devices": view.devices,
                      "nodes": view.nodes, "by": actor},
            )
            self._changed()
            return view

    def list_reservations(self, tenant: str | None = None) -> list[ReservationView]:
        """Every reservation, or `tenant`'s."""
        with self.db.session() as session:
            return reservation_views(session, tenant=tenant)

    def get_reservation(self, reservation_id: int) -> ReservationView:
        with self.db.session() as session:
            found = reservation_views(session, ids=[reservation_id])
        if not found:
            raise _not_found(reservation_id)
        return found[0]
