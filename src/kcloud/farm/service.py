"""The control plane's decisions: deployments, placements, drains and deaths, each one transaction.

Every change of desired or decided state goes through this class, in one database transaction
that either writes all of it (the deployment row, its replicas on their devices, the placement
with every candidate's reason, the events) or nothing: a refused request leaves no trace. One
process-wide lock serialises the decisions, so two requests can never place onto the same free
memory. (Several control-plane processes on one PostgreSQL would need row locks instead; kcloud
runs one.)

What the service does *not* do is start or stop anything: it writes replica rows in states
(`placed`, `evicting`, `stopping`) that the reconciler acts on through an executor, and the
reconciler reports back (`mark_running`, `replica_died`, `start_failed`, `replica_stopped`).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from kcloud.devices.catalog import UnknownChipError, load_catalog
from kcloud.devices.device import Device
from kcloud.farm.names import DeploymentNameError, qualify
from kcloud.farm.placement import DeviceStatus, FarmView, PlacementEngine, PlacementRequest, PlacementResult
from kcloud.farm.profiles import FP32_KINDS, ProfileBook
from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    EventRow,
    ModelRow,
    Node,
    PlacementCandidate,
    PlacementRow,
    ReplicaRow,
    utcnow,
)
from kcloud.farm.spec import (
    CandidateView,
    Constraints,
    DeploymentCreate,
    DeploymentUpdate,
    DeploymentView,
    DeviceView,
    EventView,
    ExplainView,
    PlacementView,
    ReplicaView,
    Slo,
)
from kcloud.models.errors import ModelFileError, ModelNotFoundError
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.store.db import Database

log = logging.getLogger(__name__)

#: States whose replica counts toward the deployment's desired count.
ACTIVE_STATES = ("placed", "starting", "running")
#: A device where a replica failed to start is avoided by that deployment for this long.
START_FAILURE_BACKOFF_S = 60.0
#: Placements kept per deployment (older ones are deleted with their candidates).
PLACEMENTS_KEPT = 20


class ControlPlaneError(Exception):
    """A request the control plane refuses; `status` is the HTTP status to answer with."""

    status = 400


class NotFoundError(ControlPlaneError):
    status = 404


class UnknownModelError(ControlPlaneError):
    status = 404


class ConflictError(ControlPlaneError):
    status = 409


class BadNameError(ControlPlaneError):
    """A deployment name outside the caller's name space (`kcloud.farm.names`)."""

    status = 400


class InvalidSpecError(ControlPlaneError):
    """Constraints that no farm could ever satisfy (unknown chip, a chip of another vendor)."""

    status = 422


#: Called inside the transaction of a create, scale or update, after placement and before
#: commit; raising refuses the change (tenancy's quota check). Keyword arguments: session,
#: tenant, deployment, replicas (desired after the change), device_uids (one per replica).
AdmissionCheck = Callable[..., None]


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


@dataclass(frozen=True)
class BundledModel:
    """A model `kcloud up` serves by itself, as an operator deployment of the same name, pinned to
    one device (by node and chip) with the replica layout measured best for it."""

    name: str
    replicas: int
    node: str
    chip: str
    threads: int | None = None


class ControlPlaneService:
    def __init__(
        self,
        db: Database,
        repository: ModelRepository,
        devices: Sequence[Device],
        *,
        profiles: ProfileBook | None = None,
        admission: Iterable[AdmissionCheck] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.repository = repository
        self.devices = list(devices)
        self.profiles = profiles if profiles is not None else ProfileBook.load()
        self.admission = list(admission)
        self._clock = clock
        self._lock = threading.RLock()
        #: (deployment, device uid) -> (until, why): devices to avoid after a failed start.
        self._exclusions: dict[tuple[str, str], tuple[float, str]] = {}
        #: Bumped whenever capacity may have changed; a pending deployment is retried only then.
        self._epoch = 0
        self._tried: dict[int, int] = {}
        #: deployment id -> what the next placement is for (failover, drain, restore, ...)
        self._triggers: dict[int, str] = {}

    # ------------------------------------------------------------------------------- helpers
    def _changed(self) -> None:
        self._epoch += 1

    @staticmethod
    def _event(
        session: Session,
        kind: str,
        message: str,
        *,
        deployment: str | None = None,
        device: str | None = None,
        replica: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            EventRow(
                kind=kind,
                message=message,
                deployment=deployment,
                device_uid=device,
                replica_id=replica,
                data=data,
            )
        )
        log.info("%s: %s", kind, message)

    def _deployment(self, session: Session, name: str, *, lock: bool = False) -> Deployment:
        query = select(Deployment).where(Deployment.name == name)
        if lock:
            query = query.with_for_update(of=Deployment)
        row = session.scalar(query)
        if row is None:
            raise NotFoundError(f"deployment {name!r} not found")
        return row

    def _view(self, session: Session) -> FarmView:
        status = {
            row.uid: DeviceStatus(
                present=row.present,
                healthy=row.healthy,
                drained=row.drained,
                reason=row.health_reason if not row.healthy else row.drain_reason,
            )
            for row in session.scalars(select(DeviceRow))
        }
        view = FarmView(self.devices, status, self.profiles)
        rows = session.execute(
            select(
                Deployment.name, ReplicaRow.device_uid, ReplicaRow.memory_bytes, ReplicaRow.load_share
            ).join(Deployment, ReplicaRow.deployment_id == Deployment.id)
        )
        for name, uid, memory, share in rows:
            view.add_replica(name, uid, memory, share)
        return view

    def _exclude(self, deployment: str) -> dict[str, str]:
        now = self._clock()
        out = {}
        for (dep, uid), (until, why) in list(self._exclusions.items()):
            if until <= now:
                del self._exclusions[(dep, uid)]
            elif dep == deployment:
                out[uid] = why
        return out

    def _request(self, dep: Deployment, count: int) -> PlacementRequest:
        model = dep.model
        return PlacementRequest(
            deployment=dep.name,
            model=model.name,
            count=count,
            total=dep.replicas,
            memory_bytes=model.memory_bytes,
            flops_per_sample=model.flops_per_sample,
            device_kinds=tuple(model.device_kinds),
            platform=model.platform,
            vendor=dep.constraint_vendor,
            chip=dep.constraint_chip,
            precision=dep.constraint_precision,
            node=dep.constraint_node,
            policy=dep.policy,  # type: ignore[arg-type]
            slo_p99_ms=dep.slo_p99_ms,
            slo_throughput_rps=dep.slo_throughput_rps,
            exclude=self._exclude(dep.name),
        )

    def _place(
        self, session: Session, dep: Deployment, count: int, trigger: str, view: FarmView | None = None
    ) -> PlacementResult:
        """Place `count` more replicas of `dep`, writing the replicas and the placement record."""
        view = view or self._view(session)
        result = PlacementEngine(view).place(self._request(dep, count))
        placement = PlacementRow(
            deployment_id=dep.id,
            trigger=trigger,
            policy=dep.policy,
            requested=count,
            placed=result.placed,
            outcome=result.outcome,
            reason=result.reason,
        )
        session.add(placement)
        session.flush()
        candidates = result.candidates()
        session.execute(
            insert(PlacementCandidate),
            [
                {
                    "placement_id": placement.id,
                    "device_uid": c.device_uid,
                    "chosen": c.chosen,
                    "eligible": c.eligible,
                    "reason": c.reason,
                    "score": c.score,
                    "perf_per_watt": c.perf_per_watt,
                    "perf_modelled": c.perf_modelled,
                }
                for c in candidates
            ],
        )
        for i in result.chosen:
            session.add(
                ReplicaRow(
                    id=_replica_id(dep.name),
                    deployment_id=dep.id,
                    device_uid=view.uids[i],
                    placement_id=placement.id,
                    generation=dep.generation,
                    state="placed",
                    memory_bytes=dep.model.memory_bytes,
                    load_share=result.load_share_of(i),
                )
            )
        kind = "placement.placed" if result.outcome == "placed" else f"placement.{result.outcome}"
        if count:
            self._event(
                session,
                kind,
                f"{dep.name}: {result.reason}",
                deployment=dep.name,
                data={"trigger": trigger, "devices": result.device_uids},
            )
        self._prune_placements(session, dep.id)
        session.flush()
        return result

    @staticmethod
    def _prune_placements(session: Session, deployment_id: int) -> None:
        ids = session.scalars(
            select(PlacementRow.id)
            .where(PlacementRow.deployment_id == deployment_id)
            .order_by(PlacementRow.id.desc())
            .offset(PLACEMENTS_KEPT)
        ).all()
        if ids:
            session.execute(delete(PlacementRow).where(PlacementRow.id.in_(ids)))

    def _admit(self, session: Session, dep: Deployment) -> None:
        if not self.admission:
            return
        session.flush()
        uids = session.scalars(
            select(ReplicaRow.device_uid).where(
                ReplicaRow.deployment_id == dep.id, ReplicaRow.state.in_(ACTIVE_STATES)
            )
        ).all()
        for check in self.admission:
            check(
                session, tenant=dep.tenant, deployment=dep.name, replicas=dep.replicas, device_uids=list(uids)
            )

    def _resolve_model(self, session: Session, name: str, version: int | None) -> tuple[ModelEntry, ModelRow]:
        try:
            entry = self.repository.get(name, version)
        except ModelNotFoundError as exc:
            raise UnknownModelError(exc.args[0] if exc.args else str(exc)) from None
        except ModelFileError as exc:
            raise InvalidSpecError(f"model {name!r} cannot be deployed: {exc}") from None
        row = session.scalar(
            select(ModelRow).where(ModelRow.name == entry.name, ModelRow.version == entry.version)
        )
        config = entry.config
        if row is None:
            row = ModelRow(name=entry.name, version=entry.version)
            session.add(row)
        row.platform = config.platform
        row.device_kinds = list(config.device_kinds)
        row.memory_bytes = config.memory_bytes
        row.flops_per_sample = config.flops_per_sample
        row.sha256 = entry.sha256
        session.flush()
        return entry, row

    def _check_constraints(self, constraints: Constraints, device_kinds: Sequence[str]) -> None:
        """Refuse (422) constraints that contradict the catalog or the model, whatever the farm."""
        catalog = load_catalog()
        vendors = {spec.vendor for spec in catalog} | {d.vendor for d in self.devices}
        if constraints.vendor is not None and constraints.vendor not in vendors:
            raise InvalidSpecError(
                f"constraints.vendor: unknown vendor {constraints.vendor!r}; "
                f"known: {', '.join(sorted(vendors))}"
            )
        if constraints.chip is not None:
            try:
                spec = catalog.get(constraints.chip)
            except UnknownChipError as exc:
                raise InvalidSpecError(f"constraints.chip: {exc}") from None
            if constraints.vendor is not None and spec.vendor != constraints.vendor:
                raise InvalidSpecError(
                    f"constraints contradict each other: chip {spec.key} is made by {spec.vendor}, "
                    f"not {constraints.vendor}"
                )
            if spec.kind not in device_kinds:
                raise InvalidSpecError(
                    f"constraints.chip: {spec.key} is a {spec.kind}; "
                    f"the model runs on {', '.join(device_kinds)}"
                )
            if constraints.precision == "fp32" and spec.kind not in FP32_KINDS:
                raise InvalidSpecError(
                    f"constraints: FP32 runs on CPUs and GPUs; {spec.key} is a {spec.kind}"
                )

    def _refresh_status(self, session: Session, dep: Deployment) -> None:
        states = Counter(
            (state, generation == dep.generation)
            for state, generation in session.execute(
                select(ReplicaRow.state, ReplicaRow.generation).where(ReplicaRow.deployment_id == dep.id)
            )
        )
        running = states[("running", True)]
        active = sum(n for (state, current), n in states.items() if current and state in ACTIVE_STATES)
        last = session.scalar(
            select(PlacementRow)
            .where(PlacementRow.deployment_id == dep.id)
            .order_by(PlacementRow.id.desc())
            .limit(1)
        )
        if dep.replicas == 0:
            status, reason = (
                ("ready", "scaled to zero") if not sum(states.values()) else ("progressing", "stopping")
            )
        elif running >= dep.replicas and active == dep.replicas:
            status, reason = "ready", f"{running} of {dep.replicas} replicas running"
        elif active < dep.replicas:
            status = "degraded" if running else "pending"
            short = last.reason if last is not None and last.outcome != "placed" else "waiting for placement"
            reason = f"{running} of {dep.replicas} running; {short}"
        else:
            status, reason = "progressing", f"{running} of {dep.replicas} replicas running"
        if (dep.status, dep.status_reason) != (status, reason):
            if dep.status != status:
                self._event(session, f"deployment.{status}", f"{dep.name}: {reason}", deployment=dep.name)
            dep.status, dep.status_reason = status, reason

    # ----------------------------------------------------------------------------- inventory
    def sync_inventory(self) -> None:
        """Record the inventory's nodes and devices; devices no longer there become absent."""
        with self._lock, self.db.transaction() as session:
            now = utcnow()
            nodes = {row.name: row for row in session.scalars(select(Node))}
            rows = {row.uid: row for row in session.scalars(select(DeviceRow))}
            for device in self.devices:
                if device.node not in nodes:
                    nodes[device.node] = Node(name=device.node, first_seen=now, last_seen=now)
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

    def update_health(self, readings: dict[str, tuple[bool, str | None]]) -> list[str]:
        """Record telemetry health; a device that turned unhealthy loses its replicas. Returns those."""
        turned: list[str] = []
        with self._lock, self.db.transaction() as session:
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
                else:
                    turned.append(row.uid)
                    self._event(
                        session, "device.unhealthy", f"{row.uid}: {row.health_reason}", device=row.uid
                    )
                    self._evict_device(session, row.uid, "failover")
                self._changed()
        return turned

    def _evict_device(self, session: Session, uid: str, trigger: str) -> int:
        rows = session.scalars(
            select(ReplicaRow).where(ReplicaRow.device_uid == uid, ReplicaRow.state.in_(ACTIVE_STATES))
        ).all()
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
        with self._lock, self.db.transaction() as session:
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
        with self._lock, self.db.transaction() as session:
            row = session.get(DeviceRow, uid)
            if row is None:
                raise NotFoundError(f"device {uid!r} not found (see GET /api/v1/devices)")
            if row.drained:
                row.drained, row.drain_reason = False, None
                self._event(session, "device.undrained", f"{uid} takes replicas again", device=uid)
                self._changed()
            session.flush()
            return self._device_views(session, [uid])[0]

    # ---------------------------------------------------------------------------- deployments
    def create(self, spec: DeploymentCreate) -> DeploymentView:
        with self._lock, self.db.transaction() as session:
            entry, model = self._resolve_model(session, spec.model, spec.version)
            self._check_constraints(spec.constraints, entry.config.device_kinds)
            try:  # a tenant's names are TENANT:NAME, so it can only collide with its own
                name = qualify(spec.tenant, spec.name or entry.name)
            except DeploymentNameError as exc:
                raise BadNameError(str(exc)) from None
            taken = session.scalar(select(Deployment.bundled).where(Deployment.name == name))
            if taken:
                raise ConflictError(f"{name!r} is a bundled model this gateway serves; choose another name")
            if taken is not None:
                raise ConflictError(
                    f"deployment {name!r} already exists; scale or update it, or choose another name"
                )
            c, slo = spec.constraints, spec.slo
            dep = Deployment(
                name=name,
                tenant=spec.tenant,
                model=model,
                version_pinned=spec.version is not None,
                replicas=spec.replicas,
                constraint_vendor=c.vendor,
                constraint_chip=c.chip,
                constraint_precision=c.precision,
                constraint_node=c.node,
                policy=spec.policy,
                slo_p99_ms=slo.p99_latency_ms,
                slo_throughput_rps=slo.throughput_rps,
                status="progressing",
                generation=1,
            )
            session.add(dep)
            session.flush()
            self._event(
                session,
                "deployment.created",
                f"{name}: {entry.name} v{entry.version}, {spec.replicas} replica(s), {spec.policy}",
                deployment=name,
            )
            self._place(session, dep, spec.replicas, "create")
            self._admit(session, dep)
            self._refresh_status(session, dep)
            self._tried[dep.id] = self._epoch
            return self._deployment_view(session, dep)

    def scale(self, name: str, replicas: int) -> DeploymentView:
        if replicas < 0:
            raise InvalidSpecError(f"replicas must be >= 0, got {replicas}")
        with self._lock, self.db.transaction() as session:
            dep = self._deployment(session, name, lock=True)
            self._scale(session, dep, replicas)
            self._admit(session, dep)
            self._refresh_status(session, dep)
            return self._deployment_view(session, dep)

    def _scale(self, session: Session, dep: Deployment, replicas: int, trigger: str = "scale") -> None:
        before = dep.replicas
        dep.replicas = replicas
        active = session.scalars(
            select(ReplicaRow).where(
                ReplicaRow.deployment_id == dep.id,
                ReplicaRow.state.in_(ACTIVE_STATES),
                ReplicaRow.generation == dep.generation,
            )
        ).all()
        if before != replicas:
            self._event(
                session,
                "deployment.scaled",
                f"{dep.name}: {before} -> {replicas} replica(s)",
                deployment=dep.name,
            )
        if len(active) < replicas:
            self._place(session, dep, replicas - len(active), trigger)
            self._tried[dep.id] = self._epoch
        elif len(active) > replicas:
            # Stop the ones not serving yet first, then the newest.
            order = sorted(active, key=lambda r: (r.state == "running", r.created_at), reverse=False)
            for row in order[: len(active) - replicas]:
                row.state = "stopping"
                self._event(
                    session,
                    "replica.stopping",
                    f"{row.id} on {row.device_uid}: scaled down",
                    deployment=dep.name,
                    device=row.device_uid,
                    replica=row.id,
                )
            self._changed()

    def update(self, name: str, patch: DeploymentUpdate) -> DeploymentView:
        with self._lock, self.db.transaction() as session:
            dep = self._deployment(session, name, lock=True)
            changed: list[str] = []
            if patch.version is not None and patch.version != dep.model.version:
                _, model = self._resolve_model(session, dep.model.name, patch.version)
                dep.model, dep.version_pinned = model, True
                changed.append(f"version {model.version}")
            if patch.constraints is not None:
                kinds = dep.model.device_kinds
                self._check_constraints(patch.constraints, kinds)
                new = (
                    patch.constraints.vendor,
                    patch.constraints.chip,
                    patch.constraints.precision,
                    patch.constraints.node,
                )
                old = (
                    dep.constraint_vendor,
                    dep.constraint_chip,
                    dep.constraint_precision,
                    dep.constraint_node,
                )
                if new != old:
                    (
                        dep.constraint_vendor,
                        dep.constraint_chip,
                        dep.constraint_precision,
                        dep.constraint_node,
                    ) = new
                    changed.append("constraints")
            if patch.slo is not None and (patch.slo.p99_latency_ms, patch.slo.throughput_rps) != (
                dep.slo_p99_ms,
                dep.slo_throughput_rps,
            ):
                dep.slo_p99_ms, dep.slo_throughput_rps = patch.slo.p99_latency_ms, patch.slo.throughput_rps
                changed.append("slo")
            if patch.policy is not None and patch.policy != dep.policy:
                dep.policy = patch.policy
                changed.append(f"policy {patch.policy}")
            if changed:
                dep.generation += 1
                self._event(
                    session,
                    "deployment.updated",
                    f"{name}: {', '.join(changed)}; replicas are replaced",
                    deployment=name,
                )
                for row in session.scalars(
                    select(ReplicaRow).where(
                        ReplicaRow.deployment_id == dep.id, ReplicaRow.state.in_(ACTIVE_STATES)
                    )
                ):
                    row.state = "evicting"
                self._changed()
            replicas = patch.replicas if patch.replicas is not None else dep.replicas
            self._scale(session, dep, replicas, "update" if changed else "scale")
            self._admit(session, dep)
            self._refresh_status(session, dep)
            return self._deployment_view(session, dep)

    def delete(self, name: str) -> None:
        with self._lock, self.db.transaction() as session:
            dep = self._deployment(session, name, lock=True)
            count = session.scalar(
                select(func.count()).select_from(ReplicaRow).where(ReplicaRow.deployment_id == dep.id)
            )
            session.delete(dep)
            self._event(
                session, "deployment.deleted", f"{name} deleted; its {count} replica(s) stop", deployment=name
            )
            self._tried.pop(dep.id, None)
            self._changed()

    def serve_bundled(self, models: Sequence[BundledModel]) -> dict[str, str]:
        """Make the bundled deployments match what this start serves; returns model -> why not served.

        A bundled deployment that still matches (same model version, device and threads) keeps its
        replicas and takes the new replica count; one that differs is replaced; one whose model is
        no longer served is deleted. A deployment made through the API keeps its name: the bundled
        model of that name is then not served.
        """
        refused: dict[str, str] = {}
        with self._lock, self.db.transaction() as session:
            resolved: dict[str, tuple[BundledModel, ModelRow]] = {}
            for model in models:
                try:
                    _, row = self._resolve_model(session, model.name, None)
                except ControlPlaneError as exc:
                    refused[model.name] = str(exc)
                    continue
                resolved[model.name] = (model, row)
            for dep in session.scalars(select(Deployment).where(Deployment.bundled)).all():
                wanted = resolved.get(dep.name)
                if wanted is not None and _bundled_as(dep, *wanted):
                    continue
                why = "its model is no longer served" if wanted is None else "its model or layout changed"
                session.delete(dep)
                self._tried.pop(dep.id, None)
                self._event(session, "deployment.deleted", f"{dep.name}: bundled; {why}", deployment=dep.name)
            session.flush()
            for name, (model, row) in resolved.items():
                dep = session.scalar(select(Deployment).where(Deployment.name == name))
                if dep is not None and not dep.bundled:
                    refused[name] = f"deployment {name!r} made through the API serves under this name"
                elif dep is not None:
                    self._scale(session, dep, model.replicas, "start")
                else:
                    dep = Deployment(
                        name=name, tenant=None, model=row, replicas=model.replicas, bundled=True,
                        constraint_node=model.node, constraint_chip=model.chip, threads=model.threads,
                        policy="spread", status="progressing", generation=1,
                    )
                    session.add(dep)
                    session.flush()
                    self._event(session, "deployment.created",
                                f"{name}: bundled {row.name} v{row.version}, {model.replicas} replica(s) on "
                                f"{model.chip} of {model.node}", deployment=name)
                    self._place(session, dep, model.replicas, "create")
                    self._tried[dep.id] = self._epoch
                self._refresh_status(session, dep)
            self._changed()
        return refused

    # ------------------------------------------------------------------------ reconciler side
    def ensure_placements(self) -> list[str]:
        """Place replicas for every deployment below its desired count; returns the names placed for.

        A deployment that was short at the last attempt is retried only when capacity may have
        changed since, so a pending deployment does not write a placement every second.
        """
        placed_for: list[str] = []
        with self._lock, self.db.transaction() as session:
            now = self._clock()
            expired = [key for key, (until, _) in self._exclusions.items() if until <= now]
            for key in expired:  # a device avoided after a failed start may be tried again
                del self._exclusions[key]
            if expired:
                self._changed()
            deps = session.scalars(select(Deployment).order_by(Deployment.id)).all()
            counts = Counter(
                deployment_id
                for deployment_id, state, generation, dgen in session.execute(
                    select(
                        ReplicaRow.deployment_id,
                        ReplicaRow.state,
                        ReplicaRow.generation,
                        Deployment.generation,
                    ).join(Deployment, ReplicaRow.deployment_id == Deployment.id)
                )
                if state in ACTIVE_STATES and generation == dgen
            )
            view: FarmView | None = None
            for dep in deps:
                missing = dep.replicas - counts[dep.id]
                if missing > 0 and self._tried.get(dep.id) != self._epoch:
                    view = view or self._view(session)
                    trigger = self._triggers.pop(dep.id, "retry")
                    result = self._place(session, dep, missing, trigger, view)
                    self._tried[dep.id] = self._epoch
                    if result.placed:
                        placed_for.append(dep.name)
                self._refresh_status(session, dep)
        return placed_for

    def settle_evictions(self) -> list[str]:
        """Evicting replicas become `stopping` once their deployment no longer needs them.

        That is when the current generation has all its replicas running (the replacement is
        up), or when the last placement could not place the replacement (no room: a drain must
        still drain, and an update may need the memory the old replicas hold).
        """
        stopping: list[str] = []
        with self._lock, self.db.transaction() as session:
            rows = session.scalars(select(ReplicaRow).where(ReplicaRow.state == "evicting")).all()
            for dep_id in {r.deployment_id for r in rows}:
                dep = session.get(Deployment, dep_id)
                if dep is None:
                    continue
                running = session.scalar(
                    select(func.count())
                    .select_from(ReplicaRow)
                    .where(
                        ReplicaRow.deployment_id == dep_id,
                        ReplicaRow.state == "running",
                        ReplicaRow.generation == dep.generation,
                    )
                )
                last = session.scalar(
                    select(PlacementRow.outcome)
                    .where(PlacementRow.deployment_id == dep_id)
                    .order_by(PlacementRow.id.desc())
                    .limit(1)
                )
                if running >= dep.replicas or last in ("pending", "partial"):
                    for row in rows:
                        if row.deployment_id == dep_id:
                            row.state = "stopping"
                            stopping.append(row.id)
                            self._event(
                                session,
                                "replica.stopping",
                                f"{row.id} on {row.device_uid}: "
                                + (
                                    "replacement running"
                                    if running >= dep.replicas
                                    else "no room for a replacement; stopping anyway"
                                ),
                                deployment=dep.name,
                                device=row.device_uid,
                                replica=row.id,
                            )
        return stopping

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
                       Deployment.threads)
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
                    device_usable=row.device_uid in usable and row.device_uid in inventory,
                    handle=row.handle,
                    threads=threads,
                )
                for row, dep_name, generation, model_name, version, threads in rows
            ]

    def entry_for(self, work: ReplicaWork) -> ModelEntry:
        """The model version a replica serves, named as its deployment (the served name)."""
        entry = self.repository.get(work.model, work.version)
        return dataclasses.replace(entry, name=work.deployment)

    def device(self, uid: str) -> Device:
        for device in self.devices:
            if device.uid == uid:
                return device
        raise NotFoundError(f"device {uid!r} is not in this inventory")

    def _replica(self, session: Session, replica_id: str) -> tuple[ReplicaRow, str] | None:
        hit = session.execute(
            select(ReplicaRow, Deployment.name)
            .join(Deployment, ReplicaRow.deployment_id == Deployment.id)
            .where(ReplicaRow.id == replica_id)
        ).first()
        return (hit[0], hit[1]) if hit else None

    def mark_starting(self, replica_id: str, *, restoring: bool = False) -> bool:
        with self._lock, self.db.transaction() as session:
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
        with self._lock, self.db.transaction() as session:
            hit = self._replica(session, replica_id)
            if hit is None or hit[0].state not in ("placed", "starting"):
                return False
            row, dep = hit
            row.state, row.executor, row.pid, row.handle = "running", executor, pid, handle
            row.started_at, row.last_error = utcnow(), None
            self._event(
                session,
                "replica.started",
                f"{row.id} running on {row.device_uid}" + (f" (pid {pid})" if pid else ""),
                deployment=dep,
                device=row.device_uid,
                replica=row.id,
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
        with self._lock, self.db.transaction() as session:
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
        with self._lock, self.db.transaction() as session:
            for dep in session.scalars(select(Deployment)):
                self._refresh_status(session, dep)

    # ----------------------------------------------------------------------------------- views
    def list_deployments(
        self, tenant: str | None = None, *, all_tenants: bool = True
    ) -> list[DeploymentView]:
        with self.db.session() as session:
            query = select(Deployment).order_by(Deployment.name)
            if not all_tenants:
                query = query.where(Deployment.tenant == tenant)
            return [self._deployment_view(session, dep) for dep in session.scalars(query)]

    def get(self, name: str) -> DeploymentView:
        with self.db.session() as session:
            return self._deployment_view(session, self._deployment(session, name))

    def owner(self, name: str) -> str | None:
        with self.db.session() as session:
            return self._deployment(session, name).tenant

    def explain(self, name: str, limit: int = 5) -> ExplainView:
        with self.db.session() as session:
            dep = self._deployment(session, name)
            placements = session.scalars(
                select(PlacementRow)
                .where(PlacementRow.deployment_id == dep.id)
                .order_by(PlacementRow.id.desc())
                .limit(limit)
            ).all()
            return ExplainView(
                deployment=dep.name,
                status=dep.status,
                reason=dep.status_reason,
                replicas=self._replica_views(session, dep),
                placements=[
                    PlacementView(
                        id=p.id,
                        at=p.created_at,
                        trigger=p.trigger,
                        policy=p.policy,
                        requested=p.requested,
                        placed=p.placed,
                        outcome=p.outcome,
                        reason=p.reason,
                        candidates=[
                            CandidateView(
                                device=c.device_uid,
                                chosen=c.chosen,
                                eligible=c.eligible,
                                reason=c.reason,
                                score=c.score,
                                perf_per_watt=c.perf_per_watt,
                                perf_modelled=c.perf_modelled,
                            )
                            for c in p.candidates
                        ],
                    )
                    for p in placements
                ],
            )

    def list_devices(self) -> list[DeviceView]:
        with self.db.session() as session:
            return self._device_views(session, None)

    def events(
        self,
        *,
        deployment: str | None = None,
        deployments: Sequence[str] | None = None,
        device: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[EventView]:
        with self.db.session() as session:
            query = select(EventRow)
            if deployment is not None:
                query = query.where(EventRow.deployment == deployment)
            if deployments is not None:
                query = query.where(EventRow.deployment.in_(list(deployments)))
            if device is not None:
                query = query.where(EventRow.device_uid == device)
            if after_id is not None:
                query = query.where(EventRow.id > after_id)
            rows = session.scalars(query.order_by(EventRow.id.desc()).limit(limit)).all()
            return [
                EventView(
                    id=r.id,
                    at=r.at,
                    kind=r.kind,
                    deployment=r.deployment,
                    device=r.device_uid,
                    replica=r.replica_id,
                    message=r.message,
                )
                for r in reversed(rows)
            ]

    def _replica_views(self, session: Session, dep: Deployment) -> list[ReplicaView]:
        emulated = {d.uid: d.emulated for d in self.devices}
        nodes = {d.uid: d.node for d in self.devices}
        rows = session.scalars(
            select(ReplicaRow).where(ReplicaRow.deployment_id == dep.id).order_by(ReplicaRow.created_at)
        ).all()
        return [
            ReplicaView(
                id=r.id,
                device=r.device_uid,
                node=nodes.get(r.device_uid, r.device_uid.split("/")[0]),
                state=r.state,
                emulated=emulated.get(r.device_uid),
                pid=r.pid,
                generation=r.generation,
                started_at=r.started_at,
                last_error=r.last_error,
            )
            for r in rows
        ]

    def _deployment_view(self, session: Session, dep: Deployment) -> DeploymentView:
        replicas = self._replica_views(session, dep)
        return DeploymentView(
            name=dep.name,
            model=dep.model.name,
            version=dep.model.version,
            version_pinned=dep.version_pinned,
            tenant=dep.tenant,
            replicas=dep.replicas,
            running=sum(1 for r in replicas if r.state == "running" and r.generation == dep.generation),
            constraints=Constraints(
                vendor=dep.constraint_vendor,
                chip=dep.constraint_chip,
                precision=dep.constraint_precision,
                node=dep.constraint_node,
            ),  # type: ignore[arg-type]
            slo=Slo(p99_latency_ms=dep.slo_p99_ms, throughput_rps=dep.slo_throughput_rps),
            policy=dep.policy,  # type: ignore[arg-type]
            status=dep.status,
            reason=dep.status_reason,
            generation=dep.generation,
            replica_list=replicas,
            created_at=dep.created_at,
            updated_at=dep.updated_at,
        )

    def _device_views(self, session: Session, uids: Sequence[str] | None) -> list[DeviceView]:
        query = select(DeviceRow).order_by(DeviceRow.uid)
        if uids is not None:
            query = query.where(DeviceRow.uid.in_(list(uids)))
        held = {
            uid: (count, memory or 0)
            for uid, count, memory in session.execute(
                select(ReplicaRow.device_uid, func.count(), func.sum(ReplicaRow.memory_bytes)).group_by(
                    ReplicaRow.device_uid
                )
            )
        }
        return [
            DeviceView(
                uid=row.uid,
                node=row.node,
                name=row.name,
                chip=row.chip_key,
                vendor=row.vendor,
                kind=row.kind,
                emulated=row.emulated,
                present=row.present,
                healthy=row.healthy,
                health_reason=row.health_reason,
                drained=row.drained,
                drain_reason=row.drain_reason,
                memory_bytes=row.memory_bytes,
                memory_placed_bytes=int(held.get(row.uid, (0, 0))[1]),
                replicas=held.get(row.uid, (0, 0))[0],
            )
            for row in session.scalars(query)
        ]


def _bundled_as(dep: Deployment, model: BundledModel, row: ModelRow) -> bool:
    """Whether a bundled deployment already serves `model` as this start would make it."""
    return (dep.model.id == row.id and dep.constraint_node == model.node and dep.constraint_chip == model.chip
            and dep.threads == model.threads and dep.constraint_vendor is None
            and dep.constraint_precision is None)


def _replica_id(deployment: str) -> str:
    """A new replica's id: 64 random bits after the name, within the column's 64 characters.

    One request may place up to 10,000 replicas at once; with 32 bits two of them shared an id
    about once in a hundred such requests (a UNIQUE violation, answered 500), with 64 never.
    """
    return f"{deployment[:47]}-{secrets.token_hex(8)}"
