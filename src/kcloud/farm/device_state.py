"""Device state: the inventory in the database, health from telemetry, drain and undrain.
"""

from __future__ import annotations

import logging

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from kcloud.devices.device import Device
from kcloud.farm.errors import (
    NotFoundError,
)
from kcloud.farm.ledger import ACTIVE_STATES, Ledger
from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    NodeRow,
    ReplicaRow,
    utcnow,
)
from kcloud.farm.spec import (
    DeviceView,
)
from kcloud.farm.stages import devices_of

log = logging.getLogger(__name__)


class DeviceState(Ledger):
    """Which devices exist and may take replicas; a drained or failed device's replicas move."""

    def sync_inventory(self) -> None:
        """Record the inventory's nodes and devices; devices no longer there become absent."""
        with self.transaction() as session:
            now = utcnow()
            nodes = {row.name: row for row in session.scalars(select(NodeRow))}
            rows = {row.uid: row for row in session.scalars(select(DeviceRow))}
            for device in self.devices:
                if device.node not in nodes:
                    nodes[device.node] = NodeRow(name=device.node, first_seen=now, last_seen=now)
                    session.add(nodes[device.node])
                nodes[device.node].last_seen = now
            session.flush()
            seen = set()
            for device in self.devices:
                seen.add(device.uid)
                row = rows.get(device.uid)
                if row is None:
                    row = DeviceRow(uid=device.uid, node=device.node, drained=False, healthy=True)
                    session.add(row)
                    self._event(
                        session,
                        "device.added",
                        f"{device.uid} ({device.name}"
                        f"{', emulated' if device.emulated else ''}) joined the farm",
                        device=device.uid,
                    )
                elif not row.present:
                    self._event(
                        session, "device.returned", f"{device.uid} is present again", device=device.uid
                    )
                    self._forget_failures_on(device.uid)
                row.local_id, row.plugin, row.vendor = device.id, device.plugin, device.vendor
                row.chip_key, row.kind, row.name = device.spec.key, device.spec.kind, device.name
                row.emulated, row.present = device.emulated, True
                row.memory_bytes = device.memory_bytes
                row.runtimes = list(device.runtimes)
                if not device.healthy and row.healthy:
                    row.healthy, row.health_reason = False, "reported unhealthy at discovery"
            for uid, row in rows.items():
                if uid not in seen and row.present:
                    row.present = False
                    self._event(session, "device.absent", f"{uid} is not in this inventory", device=uid)
            self._changed()

    def add_devices(self, devices: list[Device]) -> None:
        """Devices that joined while the control plane runs (a cluster node): into the inventory
        (a device with the same uid is replaced) and recorded like the first ones."""
        uids = {d.uid for d in devices}
        self.devices = [d for d in self.devices if d.uid not in uids] + list(devices)
        self.sync_inventory()

    def update_health(self, readings: dict[str, tuple[bool, str | None]]) -> list[str]:
        """Record telemetry health; a device that turned unhealthy loses its replicas. Returns those."""
        turned: list[str] = []
        with self.transaction() as session:
            for row in session.scalars(select(DeviceRow).where(DeviceRow.uid.in_(list(readings)))):
                healthy, reason = readings[row.uid]
                if healthy == row.healthy:
                    continue
                row.healthy, row.health_reason = (
                    healthy,
                    None if healthy else (reason or "telemetry says unhealthy"),
                )
                if healthy:
                    self._event(session, "device.healthy", f"{row.uid} is healthy again", device=row.uid)
                    self._forget_failures_on(row.uid)
                else:
                    turned.append(row.uid)
                    self._event(
                        session, "device.unhealthy", f"{row.uid}: {row.health_reason}", device=row.uid
                    )
                    self._evict_device(session, row.uid, "failover")
                self._changed()
        return turned

    def _evict_device(self, session: Session, uid: str, trigger: str) -> int:
        rows = [  # the replicas with any stage on it (a pipeline replica's later stages too)
            row
            for row in session.scalars(select(ReplicaRow).where(
                or_(ReplicaRow.device_uid == uid, ReplicaRow.stage_devices.is_not(None)),
                ReplicaRow.state.in_(ACTIVE_STATES)))
            if uid in devices_of(row.device_uid, row.stage_devices)
        ]
        for row in rows:
            row.state = "evicting"
            self._triggers[row.deployment_id] = trigger
            dep_name = session.scalar(select(Deployment.name).where(Deployment.id == row.deployment_id))
            self._event(
                session,
                "replica.evicting",
                f"{row.id} leaves {uid}; a replacement is placed first",
                deployment=dep_name,
                device=uid,
                replica=row.id,
            )
        return len(rows)

    def drain(self, uid: str, reason: str | None = None) -> DeviceView:
        with self.transaction() as session:
            row = session.get(DeviceRow, uid)
            if row is None:
                raise NotFoundError(f"device {uid!r} not found (see GET /api/v1/devices)")
            if not row.drained:
                row.drained, row.drain_reason = True, reason or "drained by an operator"
                moved = self._evict_device(session, uid, "drain")
                self._event(
                    session,
                    "device.drained",
                    f"{uid} drained ({row.drain_reason}); {moved} replica(s) move",
                    device=uid,
                )
                self._changed()
            session.flush()
            return self._device_views(session, [uid])[0]

    def undrain(self, uid: str) -> DeviceView:
        with self.transaction() as session:
            row = session.get(DeviceRow, uid)
            if row is None:
                raise NotFoundError(f"device {uid!r} not found (see GET /api/v1/devices)")
            if row.drained:
                row.drained, row.drain_reason = False, None
                self._event(session, "device.undrained", f"{uid} takes replicas again", device=uid)
                self._changed()
            session.flush()
            return self._device_views(session, [uid])[0]

    def device(self, uid: str) -> Device:
        for device in self.devices:
            if device.uid == uid:
                return device
        raise NotFoundError(f"device {uid!r} is not in this inventory")
