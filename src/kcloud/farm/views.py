"""Read views: deployments, devices, placements explained, events, as the API shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcloud.farm.ledger import Ledger
from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    EventRow,
    PlacementRow,
    ReplicaRow,
)
from kcloud.farm.spec import (
    Autoscale,
    CandidateView,
    Constraints,
    DeploymentView,
    DeviceView,
    EventView,
    ExplainView,
    PipelineView,
    PlacementView,
    ReplicaView,
    Slo,
    StageView,
)
from kcloud.farm.stages import holdings
from kcloud.models.staged import StagePlan

log = logging.getLogger(__name__)


class ReadViews(Ledger):
    """Reads only; every view is built from one session."""

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
                pipeline=_pipeline_view(dep),
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

    def device_view(self, uid: str) -> DeviceView | None:
        """One device's view; None when the control plane does not know it."""
        with self.db.session() as session:
            found = self._device_views(session, [uid])
        return found[0] if found else None

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
                    data=r.data,
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
                serves=(r.handle or {}).get("serves"),
                artifact=(r.handle or {}).get("artifact"),
                stage_devices=r.stage_devices,
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
            autoscale=Autoscale.model_validate(dep.autoscale) if dep.autoscale is not None else None,
            autoscaler=self.autoscaler_state(dep.name) if dep.autoscale is not None else None,
            status=dep.status,
            reason=dep.status_reason,
            generation=dep.generation,
            replica_list=replicas,
            pipeline=_pipeline_view(dep),
            created_at=dep.created_at,
            updated_at=dep.updated_at,
        )

    def _device_views(self, session: Session, uids: Sequence[str] | None) -> list[DeviceView]:
        query = select(DeviceRow).order_by(DeviceRow.uid)
        if uids is not None:
            query = query.where(DeviceRow.uid.in_(list(uids)))
        held: dict[str, tuple[int, int]] = {}
        for holding in holdings(session):
            count, total = held.get(holding.device_uid, (0, 0))
            held[holding.device_uid] = (count + 1, total + (holding.memory_bytes or 0))
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


def _pipeline_view(dep: Deployment) -> PipelineView | None:
    if dep.stage_plan is None:
        return None
    plan = StagePlan.from_json(dep.stage_plan)
    return PipelineView(
        stages=[StageView(index=k, memory_bytes=memory, cost_share=share)
                for k, (memory, share) in enumerate(zip(plan.memory_bytes, plan.cost_shares, strict=True))],
        balance=plan.balance,
        cost_basis=plan.cost_basis,
        asked=dep.stages,
    )
