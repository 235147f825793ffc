"""Decisions: create, scale, update and delete deployments, place their replicas, admit them.

Each is one transaction: the deployment row, its replicas on their devices, the placement with
every candidate's reason, the events, or nothing (a refused request leaves no trace). The
reconciler's side of placing (`ensure_placements`, `settle_evictions`) lives here too.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from kcloud.devices.catalog import UnknownChipError, load_catalog
from kcloud.farm.compiled import compile_refusal
from kcloud.farm.errors import (
    BadNameError,
    ConflictError,
    ControlPlaneError,
    InvalidSpecError,
    UnknownModelError,
)
from kcloud.farm.ledger import ACTIVE_STATES, PLACEMENTS_KEPT, Ledger
from kcloud.farm.names import DeploymentNameError, qualify
from kcloud.farm.placement import (
    ELIGIBLE,
    DeviceStatus,
    FarmView,
    PlacementEngine,
    PlacementRequest,
    PlacementResult,
)
from kcloud.farm.profiles import FP32_KINDS
from kcloud.farm.reservations import reserved_sets
from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    ModelRow,
    PlacementCandidate,
    PlacementRow,
    ReplicaRow,
)
from kcloud.farm.spec import (
    Autoscale,
    Constraints,
    DeploymentCreate,
    DeploymentUpdate,
    DeploymentView,
)
from kcloud.farm.stages import PipelinePlacement, devices_of, holdings, place_pipeline
from kcloud.models.config import ModelConfig
from kcloud.models.errors import ModelFileError, ModelNotFoundError
from kcloud.models.partition import PartitionError
from kcloud.models.repository import ModelEntry
from kcloud.models.staged import StagePlan, fewest_stages, plan_stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model `kcloud up` serves by itself, as an operator deployment of the same name, pinned to
    one device (by node and chip) with the replica layout measured best for it."""

    name: str
    replicas: int
    node: str
    chip: str
    threads: int | None = None


class DeploymentDecisions(Ledger):
    """What should run where: every change of desired and decided state."""

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
        view = FarmView(self.devices, status, self.profiles, reservations=reserved_sets(session))
        for held in holdings(session):
            view.add_replica(held.deployment, held.device_uid, held.memory_bytes, held.load_share)
        return view

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
            tenant=dep.tenant,
            exclude=self._exclude(dep.name),
        )

    def _place(
        self, session: Session, dep: Deployment, count: int, trigger: str, view: FarmView | None = None
    ) -> PlacementResult | PipelinePlacement:
        """Place `count` more replicas of `dep`, writing the replicas and the placement record."""
        view = view or self._view(session)
        plan = StagePlan.from_json(dep.stage_plan) if dep.stage_plan is not None else None
        request = self._request(dep, count)
        result: PlacementResult | PipelinePlacement
        if plan is None:
            result = PlacementEngine(view).place(request)
        else:
            result = place_pipeline(PlacementEngine(view), request, plan)
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
        if candidates:  # none: a farm without devices, or no pipeline replica asked for
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
        # (devices, memory on the first, load share): a pipeline replica's devices in stage order
        placed: list[tuple[list[str], int | None, float | None]]
        if isinstance(result, PipelinePlacement):
            assert plan is not None
            placed = [(result.stage_devices(k), plan.memory_bytes[0], result.load_share_of(k))
                      for k in range(result.placed)]
        else:
            whole = dep.model.memory_bytes
            placed = [([view.uids[i]], whole, result.load_share_of(i)) for i in result.chosen]
        for devices, memory, share in placed:
            session.add(
                ReplicaRow(
                    id=_replica_id(dep.name),
                    deployment_id=dep.id,
                    device_uid=devices[0],
                    placement_id=placement.id,
                    generation=dep.generation,
                    state="placed",
                    memory_bytes=memory,
                    load_share=share,
                    stage_devices=devices if plan is not None else None,
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
        uids = [
            uid
            for first, stage_devices in session.execute(
                select(ReplicaRow.device_uid, ReplicaRow.stage_devices).where(
                    ReplicaRow.deployment_id == dep.id, ReplicaRow.state.in_(ACTIVE_STATES)
                )
            )
            for uid in devices_of(first, stage_devices)
        ]
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

    def _decide_stages(self, session: Session, dep: Deployment, entry: ModelEntry) -> None:
        """Whether `dep` runs whole on one device or as a pipeline, and where its graph is cut.

        With `stages` asked for, the graph is cut into that many, balanced by cost, each fitting
        the largest device the deployment may use. Without, a model that fits such a device runs
        whole, and one that does not gets the fewest stages whose parts fit (or, when no split
        fits, stays whole and pending). 422 when the stages asked for cannot be cut so
        (`PartitionError` says where the graph can be cut)."""
        asked = dep.stages
        dep.stage_plan = None
        if asked == 1 or (asked is None and entry.config.memory_bytes is None):
            return
        precision = dep.constraint_precision
        if entry.config.platform != "onnxruntime" or precision not in (None, "fp32"):
            if asked is not None:
                what = ("its engine splits a generative model itself" if entry.config.generative else
                        f"a pipeline serves the FP32 graph, and precision {precision} was asked")
                raise InvalidSpecError(f"stages: {asked} asked, but {what}")
            return
        largest = self._largest_device(session, dep)
        if asked is None and (largest is None or (entry.config.memory_bytes or 0) <= largest):
            return
        try:
            if asked is not None:
                plan = plan_stages(entry, asked, memory_limit=largest)
            else:
                assert largest is not None
                plan = fewest_stages(entry, largest)
        except Exception as exc:  # PartitionError; or a graph that ONNX or its runtime cannot read
            why = str(exc) if isinstance(exc, PartitionError) else f"its graph cannot be cut: {exc}"
            if asked is not None:
                raise InvalidSpecError(f"stages: {why}") from None
            # Not asked for: it stays whole, pending until a device big enough joins the farm.
            self._event(session, "deployment.unsplit", f"{dep.name}: served whole: {why}",
                        deployment=dep.name)
            return
        dep.stage_plan = plan.as_json()

    def _largest_device(self, session: Session, dep: Deployment) -> int | None:
        """The most memory any device this deployment may use has (every filter but memory)."""
        view = self._view(session)
        request = dataclasses.replace(self._request(dep, 0), memory_bytes=None)
        result = PlacementEngine(view).place(request, commit=False)
        sizes = view.memory_total[(result.verdict == ELIGIBLE) & view.memory_known]
        return int(sizes.max()) if sizes.size else None

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

    def create(self, spec: DeploymentCreate) -> DeploymentView:
        with self.transaction() as session:
            entry, model = self._resolve_model(session, spec.model, spec.version)
            self._check_constraints(spec.constraints, entry.config.device_kinds)
            if why := compile_refusal(entry, spec.constraints.precision):
                raise InvalidSpecError(why)
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
            autoscale = None
            replicas = spec.replicas
            if spec.autoscale is not None:
                autoscale = self._checked_autoscale(spec.autoscale, entry.config, slo.p99_latency_ms)
                if "replicas" not in spec.model_fields_set:
                    replicas = autoscale.min_replicas
                elif not autoscale.min_replicas <= replicas <= autoscale.max_replicas:
                    raise InvalidSpecError(
                        f"replicas ({replicas}) must be within the autoscale bounds "
                        f"[{autoscale.min_replicas}, {autoscale.max_replicas}]")
            dep = Deployment(
                name=name,
                tenant=spec.tenant,
                model=model,
                version_pinned=spec.version is not None,
                replicas=replicas,
                autoscale=autoscale.model_dump(mode="json") if autoscale is not None else None,
                constraint_vendor=c.vendor,
                constraint_chip=c.chip,
                constraint_precision=c.precision,
                constraint_node=c.node,
                policy=spec.policy,
                slo_p99_ms=slo.p99_latency_ms,
                slo_throughput_rps=slo.throughput_rps,
                stages=spec.stages,
                status="progressing",
                generation=1,
            )
            session.add(dep)
            session.flush()
            self._decide_stages(session, dep, entry)
            self._event(
                session,
                "deployment.created",
                f"{name}: {entry.name} v{entry.version}, {replicas} replica(s), {spec.policy}"
                + (f", autoscaled {_bounds(autoscale)}" if autoscale is not None else "")
                + (f", each a {StagePlan.from_json(dep.stage_plan).summary()}" if dep.stage_plan else ""),
                deployment=name,
            )
            self._place(session, dep, replicas, "create")
            self._admit(session, dep)
            self._refresh_status(session, dep)
            self._tried[dep.id] = self._epoch
            return self._deployment_view(session, dep)

    def scale(self, name: str, replicas: int) -> DeploymentView:
        if replicas < 0:
            raise InvalidSpecError(f"replicas must be >= 0, got {replicas}")
        with self.transaction() as session:
            dep = self._deployment(session, name, lock=True)
            self._refuse_if_autoscaled(dep)
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
        with self.transaction() as session:
            dep = self._deployment(session, name, lock=True)
            changed: list[str] = []
            if patch.version is not None and patch.version != dep.model.version:
                _, model = self._resolve_model(session, dep.model.name, patch.version)
                dep.model, dep.version_pinned = model, True
                changed.append(f"version {model.version}")
            if patch.constraints is not None:
                kinds = dep.model.device_kinds
                self._check_constraints(patch.constraints, kinds)
                entry = self.repository.get(dep.model.name, dep.model.version)
                if why := compile_refusal(entry, patch.constraints.precision):
                    raise InvalidSpecError(why)
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
            replicas = dep.replicas
            if "autoscale" in patch.model_fields_set:
                replicas = self._set_autoscale(session, dep, patch.autoscale)
            if patch.replicas is not None:
                self._refuse_if_autoscaled(dep)
                replicas = patch.replicas
            if changed:
                if any(c.startswith("version") or c == "constraints" for c in changed):
                    self._decide_stages(session, dep, self.repository.get(dep.model.name, dep.model.version))
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
            self._scale(session, dep, replicas, "update" if changed else "scale")
            self._admit(session, dep)
            self._refresh_status(session, dep)
            return self._deployment_view(session, dep)

    # -- autoscaling ----------------------------------------------------------------------------
    def _checked_autoscale(
        self, policy: Autoscale, config: ModelConfig, slo_p99_ms: float | None
    ) -> Autoscale:
        """`policy` with its target filled in, or 422 for one this model or server cannot follow."""
        interval = self.autoscale_interval_s
        for field_name in ("stable_window_s", "panic_window_s"):
            if getattr(policy, field_name) < interval:
                raise InvalidSpecError(
                    f"autoscale.{field_name} ({getattr(policy, field_name):g} s) is shorter than the "
                    f"interval the load is read at ({interval:g} s)")
        target = policy.target
        if policy.metric == "tokens" and not config.generative:
            raise InvalidSpecError(
                f"autoscale.metric tokens: model {config.name!r} is not a generative model, so it has "
                "no tokens in flight; use ongoing, rps or p99")
        if policy.metric == "p99":
            if config.generative:
                raise InvalidSpecError(
                    "autoscale.metric p99: the latency of a whole generation depends on its length; "
                    "scale a chat model on tokens, ongoing or rps")
            target = target or slo_p99_ms
            if target is None:
                raise InvalidSpecError(
                    "autoscale.metric p99 needs a target in ms, or the deployment's SLO p99_latency_ms")
        if policy.min_replicas == 0 and config.generative:
            raise InvalidSpecError(
                "autoscale.min_replicas 0: a chat model keeps at least one engine (an engine takes tens "
                "of seconds to load, longer than a request should wait)")
        if target is None:  # ongoing: a replica is busy when it holds a full batch
            target = float(config.batching.max_batch_size or 1) if not config.generative else 16.0
        return policy.model_copy(update={"target": target})

    def _set_autoscale(self, session: Session, dep: Deployment, policy: Autoscale | None) -> int:
        """Change (or with None, end) `dep`'s autoscaling; the replica count it should have now."""
        if policy is None:
            if dep.autoscale is not None:
                dep.autoscale = None
                self._event(session, "autoscale.off", f"{dep.name}: autoscaling off; "
                            f"{dep.replicas} replica(s) from now on", deployment=dep.name)
            return dep.replicas
        config = self.repository.get(dep.model.name, dep.model.version).config
        checked = self._checked_autoscale(policy, config, dep.slo_p99_ms)
        dep.autoscale = checked.model_dump(mode="json")
        replicas = min(checked.max_replicas, max(checked.min_replicas, dep.replicas))
        self._event(session, "autoscale.on", f"{dep.name}: autoscaled {_bounds(checked)}",
                    deployment=dep.name, data=dep.autoscale)
        return replicas

    @staticmethod
    def _refuse_if_autoscaled(dep: Deployment) -> None:
        if dep.autoscale is not None:
            raise ConflictError(
                f"deployment {dep.name!r} is autoscaled between {dep.autoscale['min_replicas']} and "
                f"{dep.autoscale['max_replicas']} replicas: change its autoscale policy, or turn it off "
                "(autoscale: null), to set the count by hand")

    def autoscaled(self) -> list[AutoscaledDeployment]:
        """Every deployment with an autoscale policy, as the autoscaler reads them each interval."""
        with self.db.session() as session:
            return [
                AutoscaledDeployment(dep.name, Autoscale.model_validate(dep.autoscale), dep.replicas,
                                     dep.model.name, dep.model.version)
                for dep in session.scalars(select(Deployment).where(Deployment.autoscale.is_not(None)))
            ]

    def autoscale_to(self, name: str, replicas: int, reason: str, inputs: dict[str, Any]) -> bool:
        """The autoscaler's decision: set `name`'s replicas (placed where placement says, drained
        when fewer), recorded with its inputs. False when it is gone or no longer autoscaled;
        raises the admission check's refusal (a tenant's quota) with nothing written."""
        with self.transaction() as session:
            dep = session.scalar(select(Deployment).where(Deployment.name == name).with_for_update())
            if dep is None or dep.autoscale is None or dep.replicas == replicas:
                return False
            before = dep.replicas
            self._scale(session, dep, replicas, "autoscale")
            self._admit(session, dep)
            self._event(session, "autoscale.scaled", f"{name}: {before} -> {replicas} replica(s): {reason}",
                        deployment=name, data=inputs)
            self._refresh_status(session, dep)
            return True

    def autoscale_event(self, name: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record what the autoscaler saw or was refused (a cold start's wait, a quota), as an event."""
        with self.transaction() as session:
            self._event(session, kind, f"{name}: {message}", deployment=name, data=data)

    def delete(self, name: str) -> None:
        with self.transaction() as session:
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
        with self.transaction() as session:
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

    def ensure_placements(self) -> list[str]:
        """Place replicas for every deployment below its desired count; returns the names placed for.

        A deployment that was short at the last attempt is retried only when capacity may have
        changed since, so a pending deployment does not write a placement every second.
        """
        placed_for: list[str] = []
        with self.transaction() as session:
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
        with self.transaction() as session:
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


@dataclass(frozen=True)
class AutoscaledDeployment:
    """One autoscaled deployment as the autoscaler reads it."""

    name: str
    policy: Autoscale
    replicas: int
    model: str
    version: int


def _bounds(policy: Autoscale) -> str:
    return (f"{policy.min_replicas}..{policy.max_replicas} replicas on {policy.metric} "
            f"(target {policy.target:g} per replica)")


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
