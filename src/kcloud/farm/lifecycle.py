"""Replica lifecycle: what the reconciler reads (`work`) and what it reports back.

The service starts and stops nothing itself: it writes replica rows in states (`placed`,
`evicting`, `stopping`) that the reconciler acts on through an executor, and the reconciler
reports back (`mark_running`, `replica_died`, `start_failed`, `replica_stopped`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcloud.devices.device import Device
from kcloud.farm.compiled import served_entry
from kcloud.farm.ledger import START_FAILURE_BACKOFF_S, Ledger
from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    ModelRow,
    ReplicaRow,
    utcnow,
)
from kcloud.farm.stages import devices_of
from kcloud.models.partition import Partition
from kcloud.models.repository import ModelEntry
from kcloud.models.staged import StagePlan, stage_partition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaWork:
    """One replica row as the reconciler needs it."""

    replica_id: str
    deployment: str
    state: str
    device_uid: str
    model: str
    version: int
    generation: int
    current: bool  # of the deployment's current generation
    device_usable: bool  # present, healthy and not drained
    handle: dict[str, Any] | None
    #: Intra-op threads per replica (None: the runtime's default layout for the device).
    threads: int | None = None
    #: The deployment's precision constraint: which compiled artifact the replica serves.
    precision: str | None = None
    #: A pipeline replica's devices in stage order, and its deployment's stage plan (JSON).
    stage_devices: tuple[str, ...] | None = None
    stage_plan: dict[str, Any] | None = None

    @property
    def devices(self) -> list[str]:
        """Every device the replica runs on (its stages' for a pipeline replica)."""
        return devices_of(self.device_uid, self.stage_devices)


class ReplicaLifecycle(Ledger):
    """The reconciler's view of the replica rows, and the transitions it reports."""

    def work(self) -> list[ReplicaWork]:
        with self.db.session() as session:
            usable = {
                uid
                for uid, present, healthy, drained in session.execute(
                    select(DeviceRow.uid, DeviceRow.present, DeviceRow.healthy, DeviceRow.drained)
                )
                if present and healthy and not drained
            }
            inventory = {d.uid for d in self.devices}
            rows = session.execute(
                select(ReplicaRow, Deployment.name, Deployment.generation, ModelRow.name, ModelRow.version,
                       Deployment.threads, Deployment.constraint_precision, Deployment.stage_plan)
                .join(Deployment, ReplicaRow.deployment_id == Deployment.id)
                .join(ModelRow, Deployment.model_id == ModelRow.id)
                .order_by(ReplicaRow.created_at)
            ).all()
            return [
                ReplicaWork(
                    replica_id=row.id,
                    deployment=dep_name,
                    state=row.state,
                    device_uid=row.device_uid,
                    model=model_name,
                    version=version,
                    generation=row.generation,
                    current=row.generation == generation,
                    device_usable=all(uid in usable and uid in inventory
                                      for uid in devices_of(row.device_uid, row.stage_devices)),
                    handle=row.handle,
                    threads=threads,
                    precision=precision,
                    stage_devices=tuple(row.stage_devices) if row.stage_devices else None,
                    stage_plan=plan if row.stage_devices else None,
                )
                for row, dep_name, generation, model_name, version, threads, precision, plan in rows
            ]

    def entry_for(self, work: ReplicaWork, device: Device) -> tuple[ModelEntry, str, Partition | None]:
        """The model version a replica serves on `device` (it is served as its deployment,
        `ReplicaSpec.deployment`), and why: from the artifact its precision needs there (compiled
        on first use), or, for a pipeline replica, the source graph with its stage files (cut on
        first use)."""
        entry = self.repository.get(work.model, work.version)
        if work.stage_plan is None:
            return (*served_entry(entry, device, work.precision), None)
        plan = StagePlan.from_json(work.stage_plan)
        return entry, f"the FP32 graph in {plan.summary()}", stage_partition(entry, plan)

    def _replica(self, session: Session, replica_id: str) -> tuple[ReplicaRow, str] | None:
        hit = session.execute(
            select(ReplicaRow, Deployment.name)
            .join(Deployment, ReplicaRow.deployment_id == Deployment.id)
            .where(ReplicaRow.id == replica_id)
        ).first()
        return (hit[0], hit[1]) if hit else None

    def mark_starting(self, replica_id: str, *, restoring: bool = False) -> bool:
        with self.transaction() as session:
            hit = self._replica(session, replica_id)
            if hit is None or hit[0].state not in ("placed", "starting", "running"):
                return False
            row, dep = hit
            row.state = "starting"
            if restoring:
                self._event(
                    session,
                    "replica.restoring",
                    f"{row.id}: restarting on {row.device_uid} after a restart",
                    deployment=dep,
                    device=row.device_uid,
                    replica=row.id,
                )
            return True

    def mark_running(
        self, replica_id: str, *, executor: str, pid: int | None, handle: dict[str, Any]
    ) -> bool:
        """Record a started replica; False when its row is gone (deleted meanwhile: stop it)."""
        with self.transaction() as session:
            hit = self._replica(session, replica_id)
            if hit is None or hit[0].state not in ("placed", "starting"):
                return False
            row, dep = hit
            row.state, row.executor, row.pid, row.handle = "running", executor, pid, handle
            row.started_at, row.last_error = utcnow(), None
            took = handle.get("start_seconds")
            self._event(
                session,
                "replica.started",
                f"{row.id} running on {' → '.join(devices_of(row.device_uid, row.stage_devices))}"
                + (f" (pid {pid})" if pid else "")
                + (f", serving {took:.1f} s after it was started" if took is not None else ""),
                deployment=dep,
                device=row.device_uid,
                replica=row.id,
                data={"start_seconds": took} if took is not None else None,
            )
            dep_row = self._deployment(session, dep)
            self._refresh_status(session, dep_row)
            return True

    def start_failed(self, replica_id: str, error: str) -> None:
        """A replica could not start: forget it, and keep its deployment off that device a while."""
        self._drop_replica(
            replica_id, "replica.failed",
            lambda row: f"{row.id} could not start on {row.device_uid}: {error}",
            trigger="retry", exclusion=f"a replica failed to start here: {error}")

    def replica_died(self, replica_id: str, reason: str) -> None:
        """A running replica's process died: forget it; the next placement replaces it (failover)."""
        self._drop_replica(
            replica_id, "replica.died",
            lambda row: f"{row.id} on {row.device_uid}: {reason}; placing a replacement",
            trigger="failover", with_pid=True)

    def replica_stopped(self, replica_id: str) -> None:
        """A `stopping` (or vanished) replica is stopped: its row goes, its device is free."""
        self._drop_replica(replica_id, "replica.stopped", lambda row: f"{row.id} stopped on {row.device_uid}")

    def forget_unusable(self, replica_id: str, why: str) -> None:
        """A replica to restore whose device is gone, unhealthy or drained: replace it elsewhere."""
        self._drop_replica(
            replica_id, "replica.lost", lambda row: f"{row.id}: {why}; placing it elsewhere",
            trigger="restore")

    def _drop_replica(
        self,
        replica_id: str,
        kind: str,
        describe: Callable[[ReplicaRow], str],
        *,
        trigger: str | None = None,
        with_pid: bool = False,
        exclusion: str | None = None,
    ) -> None:
        """Forget a replica's row, record why (event `kind`), and tell the next placement pass
        what to do about it (`trigger`); `exclusion` keeps its deployment off the device a while."""
        with self.transaction() as session:
            hit = self._replica(session, replica_id)
            if hit is None:
                return
            row, dep = hit
            if exclusion is not None:
                self._exclusions[(dep, row.device_uid)] = (self._clock() + START_FAILURE_BACKOFF_S, exclusion)
            if trigger is not None:
                self._triggers[row.deployment_id] = trigger
            self._event(session, kind, describe(row), deployment=dep, device=row.device_uid, replica=row.id,
                        data={"pid": row.pid} if with_pid else None)
            session.delete(row)
            self._changed()

    def refresh_statuses(self) -> None:
        with self.transaction() as session:
            for dep in session.scalars(select(Deployment)):
                self._refresh_status(session, dep)
