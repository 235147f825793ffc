"""Pipeline placement: a replica whose graph is split into stages takes one device per stage.

Each stage is placed like a small replica of its own by the ordinary engine
(`kcloud.farm.placement`): every filter applies (health, reservations, runtime, constraints,
memory), with the stage's memory (`kcloud.models.staged.StagePlan`) and its share of the model's
work. The stages of one replica go to distinct devices where they can; a stage no other device
has room for may share a device with an earlier stage of its replica (two worker processes on one
host CPU, say), and its reason says so. A replica whose later stage finds no device gives back
what its earlier stages took, so no replica is ever half placed.

`PipelinePlacement` answers what `PlacementResult` answers for a whole-model replica (outcome,
reason, every device's candidate line), so the decision is recorded and explained the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcloud.farm.placement import Candidate, PlacementEngine, PlacementRequest, PlacementResult
from kcloud.farm.placement_reasons import SHARED_STAGE, pipeline_summary
from kcloud.farm.schema import Deployment, ReplicaRow
from kcloud.models.staged import StagePlan


@dataclass
class PipelinePlacement:
    """Replicas placed stage by stage: per replica, one device index per stage."""

    request: PlacementRequest
    plan: StagePlan
    #: Per replica placed: each stage's result (its `chosen` is that stage's one device).
    replicas: list[list[PlacementResult]]
    #: The stage results of the replica that could not be placed (the last one tried), if any.
    short: list[PlacementResult]
    #: (replica, stage) placed on a device an earlier stage of the same replica holds.
    shared: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    @property
    def placed(self) -> int:
        return len(self.replicas)

    @property
    def outcome(self) -> str:
        if self.placed == self.request.count:
            return "placed"
        return "partial" if self.placed else "pending"

    def stage_devices(self, replica: int) -> list[str]:
        return [stage.device_uids[0] for stage in self.replicas[replica]]

    @property
    def device_uids(self) -> list[str]:
        return [uid for k in range(self.placed) for uid in self.stage_devices(k)]

    @property
    def reason(self) -> str:
        return pipeline_summary(self)

    def candidates(self) -> list[Candidate]:
        """Every device once: the stages it was chosen for, else its verdict for stage 0."""
        chosen: dict[str, list[tuple[int, Candidate]]] = {}
        for k, stages in enumerate(self.replicas):
            for index, result in enumerate(stages):
                uid = result.device_uids[0]
                hit = next(c for c in result.candidates() if c.device_uid == uid)
                if (k, index) in self.shared:
                    hit = dataclasses.replace(hit, reason=hit.reason + SHARED_STAGE)
                chosen.setdefault(uid, []).append((index, hit))
        if not self.replicas and not self.short:  # nothing was asked to be placed
            return []
        first = (self.replicas[0] if self.replicas else self.short)[0]
        out: list[Candidate] = []
        for candidate in first.candidates():
            hits = chosen.get(candidate.device_uid)
            if hits is None:
                out.append(dataclasses.replace(candidate, chosen=0))
                continue
            reasons = "; ".join(f"stage {index}: {c.reason}" for index, c in hits)
            out.append(dataclasses.replace(hits[0][1], chosen=len(hits), reason=reasons))
        out.sort(key=lambda c: -c.chosen)
        return out

    def load_share_of(self, replica: int) -> float | None:
        """The first stage's load share, kept on the replica row as a whole replica's is."""
        first = self.replicas[replica][0]
        return first.load_share_of(first.chosen[0])


def place_pipeline(engine: PlacementEngine, request: PlacementRequest, plan: StagePlan) -> PipelinePlacement:
    """Place `request.count` replicas of `plan.stages` stages each on `engine`'s view, committing them."""
    view = engine.view
    flops = request.flops_per_sample
    replicas: list[list[PlacementResult]] = []
    short: list[PlacementResult] = []
    shared: set[tuple[int, int]] = set()
    for _ in range(request.count):
        stages: list[PlacementResult] = []
        for index, memory in enumerate(plan.memory_bytes):
            taken = {uid: "holds another stage of this replica" for r in stages for uid in r.device_uids}
            stage_request = dataclasses.replace(
                request,
                count=1,
                memory_bytes=memory,
                flops_per_sample=None if flops is None else flops * plan.cost_shares[index],
                exclude={**request.exclude, **taken},
            )
            result = engine.place(stage_request)
            if not result.placed and taken:  # no other device: an earlier stage's, if it has room
                again = engine.place(dataclasses.replace(stage_request, exclude=request.exclude))
                if again.placed:
                    result = again
                    shared.add((len(replicas), index))
            stages.append(result)
            if not result.placed:
                break
        if stages[-1].placed and len(stages) == plan.stages:
            replicas.append(stages)
            continue
        for result in stages[:-1]:  # give back what the earlier stages of this replica took
            uid = result.device_uids[0]
            view.remove_replica(
                request.deployment, uid, result.request.memory_bytes, result.load_share_of(result.chosen[0])
            )
        short = stages
        break
    return PipelinePlacement(request, plan, replicas, short, shared)


@dataclass(frozen=True)
class Holding:
    """Memory (and throughput share) one replica holds on one device; a pipeline replica holds
    one per stage, its load share on the first."""

    deployment: str
    device_uid: str
    memory_bytes: int | None
    load_share: float | None


def holdings(session: Session) -> Iterator[Holding]:
    """What every replica row holds, device by device."""
    rows = session.execute(
        select(
            Deployment.name,
            ReplicaRow.device_uid,
            ReplicaRow.memory_bytes,
            ReplicaRow.load_share,
            ReplicaRow.stage_devices,
            Deployment.stage_plan,
        ).join(Deployment, ReplicaRow.deployment_id == Deployment.id)
    )
    stage_memory: dict[str, tuple[int | None, ...]] = {}  # per deployment, its plan read once
    for name, uid, memory, share, stage_devices, plan in rows:
        if not stage_devices or plan is None:
            yield Holding(name, uid, memory, share)
            continue
        if name not in stage_memory:
            stage_memory[name] = StagePlan.from_json(plan).memory_bytes
        for index, (stage_uid, held) in enumerate(zip(stage_devices, stage_memory[name], strict=False)):
            yield Holding(name, stage_uid, held, share if index == 0 else None)


def devices_of(device_uid: str, stage_devices: Sequence[str] | None) -> list[str]:
    """Every device a replica row runs on: its stages' for a pipeline replica, else its one."""
    return list(stage_devices) if stage_devices else [device_uid]
