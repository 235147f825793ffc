"""Stage plans: how a deployment's model is split over several devices, and the files it runs.

A deployment whose model does not fit one device's memory (or that asks for `stages`) is served
as a pipeline (`kcloud.serving.pipeline_worker`). Its plan is decided once, when the deployment
is created or its version changes: where to cut (`kcloud.models.partition`, balanced by a
measured profile over the model's own data set, or by weight bytes without one), what each
stage holds in memory and its share of the work. The database keeps the plan (cut positions,
not files), so every replica, after any restart, runs the same stages. The stage files are cut
from the source graph into the model's repository (`<version>/pipelines/<cuts>/`) the first
time a replica needs them, and reused after.

Stage memory is modelled: the model's `memory_bytes` split by each stage's share of the weight
bytes. For the built-in models `memory_bytes` is their weight bytes, so there the split is exact.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kcloud.models.partition import (
    Partition,
    PartitionError,
    Stage,
    choose_cuts,
    crossings,
    cut_candidates,
    node_costs,
    split_at,
    stage_costs,
    stage_weight_bytes,
)
from kcloud.models.repository import ModelEntry, _locked

PIPELINES_DIR = "pipelines"
PLAN_FILE = "partition.json"
#: Most stages a deployment is split into: each is a device, a process and a hop per micro-batch.
MAX_STAGES = 16
#: Calibration batches profiled to weigh the graph's nodes (8 samples each).
PROFILE_BATCHES = 2


@dataclass(frozen=True)
class StagePlan:
    """Where a deployment's graph is cut, and what each stage holds and costs."""

    #: Node positions the graph is cut before (stage k runs nodes [cuts[k-1], cuts[k])).
    cuts: tuple[int, ...]
    #: Device memory each stage holds (modelled: the model's memory split by weight share).
    memory_bytes: tuple[int | None, ...]
    #: Each stage's share of the graph's cost; they add up to 1.
    cost_shares: tuple[float, ...]
    #: How node costs were found (measured profile or weight bytes).
    cost_basis: str

    @property
    def stages(self) -> int:
        return len(self.cost_shares)

    @property
    def balance(self) -> float:
        """The costliest stage against the mean stage (1.0: perfectly balanced)."""
        return max(self.cost_shares) * self.stages

    def as_json(self) -> dict[str, Any]:
        return {
            "cuts": list(self.cuts),
            "memory_bytes": list(self.memory_bytes),
            "cost_shares": list(self.cost_shares),
            "cost_basis": self.cost_basis,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagePlan:
        return cls(
            tuple(int(c) for c in data["cuts"]),
            tuple(None if m is None else int(m) for m in data["memory_bytes"]),
            tuple(float(s) for s in data["cost_shares"]),
            str(data["cost_basis"]),
        )

    def summary(self) -> str:
        shares = ", ".join(f"{share:.0%}" for share in self.cost_shares)
        return f"{self.stages} stages (cost {shares}; balance {self.balance:.2f}, {self.cost_basis})"


def _calibration_feeds(entry: ModelEntry) -> list[dict[str, np.ndarray]] | None:
    """A few batches of the model's own data set as graph feeds, to profile it on; None without."""
    if entry.config.accuracy is None or not entry.config.accuracy.dataset:
        return None
    from kcloud.models.datasets import load_dataset
    from kcloud.models.pipelines import graph_feeds

    samples = load_dataset(entry).inputs
    return graph_feeds(entry, samples[: 8 * PROFILE_BATCHES])[:PROFILE_BATCHES]


class _Graph:
    """One model's graph with what every plan of it needs, worked out once."""

    def __init__(self, entry: ModelEntry) -> None:
        if entry.config.platform != "onnxruntime":
            raise PartitionError(
                f"model {entry.name} is a {entry.config.platform} model: its engine splits it "
                "(tensor parallelism), kcloud cuts only ONNX graphs into stages"
            )
        self.entry = entry
        self.model = onnx.load(str(entry.weights_path))
        self.costs, self.basis = node_costs(entry.weights_path, _calibration_feeds(entry))
        self.crossing = crossings(self.model)
        self.weight_bytes = stage_weight_bytes(self.model, [])[0]
        declared = entry.config.memory_bytes
        #: Device bytes per weight byte (the declared memory also holds workspace).
        self.scale = declared / self.weight_bytes if declared and self.weight_bytes else 1.0

    @property
    def most_stages(self) -> int:
        return min(MAX_STAGES, len(cut_candidates(self.crossing)) + 1)

    def plan(self, stages: int, memory_limit: int | None) -> StagePlan:
        if stages > MAX_STAGES:
            raise PartitionError(f"at most {MAX_STAGES} stages; asked for {stages}")
        limit = None if memory_limit is None else int(memory_limit / self.scale)
        try:
            cuts = choose_cuts(self.model, self.crossing, self.costs, stages, memory_limit=limit)
        except PartitionError as exc:
            if memory_limit is None or "keeps every stage within" not in str(exc):
                raise
            raise PartitionError(
                f"model {self.entry.name} cannot be split into {stages} stages that each fit "
                f"{memory_limit / 2**30:.3g} GiB (the largest device it may use)"
            ) from None
        memory = [math.ceil(w * self.scale) for w in stage_weight_bytes(self.model, cuts)]
        return StagePlan(tuple(cuts), tuple(memory), tuple(stage_costs(self.costs, cuts)), self.basis)


def plan_stages(entry: ModelEntry, stages: int, *, memory_limit: int | None = None) -> StagePlan:
    """`stages` stages of `entry`'s graph, balanced by cost, each within `memory_limit` device bytes."""
    return _Graph(entry).plan(stages, memory_limit)


def fewest_stages(entry: ModelEntry, memory_limit: int) -> StagePlan:
    """The plan with the fewest stages (at least 2) whose every stage fits `memory_limit` bytes."""
    graph = _Graph(entry)
    declared = entry.config.memory_bytes or graph.weight_bytes
    first = max(2, math.ceil(declared / memory_limit))
    for stages in range(first, graph.most_stages + 1):
        try:
            return graph.plan(stages, memory_limit)
        except PartitionError:
            continue
    raise PartitionError(
        f"model {entry.name} ({declared / 2**30:.3g} GiB) does not fit the largest device it may use "
        f"({memory_limit / 2**30:.3g} GiB), and no split into at most {graph.most_stages} stages makes "
        "every stage fit: its largest indivisible part is too big"
    )


def stage_partition(entry: ModelEntry, plan: StagePlan) -> Partition:
    """The stage files of `plan`, cut from `entry`'s graph on first use and kept in its repository."""
    directory = entry.path / PIPELINES_DIR / ("cut-" + "-".join(str(c) for c in plan.cuts))
    with _locked(entry.path / PIPELINES_DIR / ".lock"):
        cached = _load(directory, plan)
        if cached is not None:
            return cached
        staging = directory.with_name(directory.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        parts = split_at(
            onnx.load(str(entry.weights_path)),
            list(plan.cuts),
            staging,
            list(plan.cost_shares),
            plan.cost_basis,
        )
        (staging / PLAN_FILE).write_text(json.dumps(parts.describe(), indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    return _load(directory, plan) or parts


def _load(directory: Path, plan: StagePlan) -> Partition | None:
    """The partition kept in `directory`, or None when it is missing, torn or another plan's."""
    try:
        described = json.loads((directory / PLAN_FILE).read_text())
        stages = tuple(
            Stage(
                s["index"],
                s["nodes"][0],
                s["nodes"][1],
                tuple(s["inputs"]),
                tuple(s["outputs"]),
                int(s["weight_bytes"]),
                float(s["cost_share"]),
                directory / f"stage-{s['index']}.onnx",
            )
            for s in described["stages"]
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if len(stages) != plan.stages or not all(stage.path and stage.path.is_file() for stage in stages):
        return None
    return Partition(stages, plan.cost_basis, tuple(described.get("graph_outputs", ())))
