"""`RayExecutor` decisions that need no cluster: where an LLM engine replica's process runs (the
gateway's child on the head's node; an `EngineHost` actor's on any other)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import cpu_device

from kcloud.cluster.engines import RayEngineProcess
from kcloud.cluster.executor import RayExecutor
from kcloud.farm.executor import ReplicaSpec
from kcloud.models.builtin import SMOLLM
from kcloud.serving.engine import EngineReplica, LocalEngineProcess
from kcloud.serving.replica import create_replica
from kcloud.serving.router import Router


def test_an_engine_replica_runs_where_its_device_is(builtin_repository):
    executor = RayExecutor(Router(builtin_repository), head_node="head")
    entry = builtin_repository.get(SMOLLM)
    for node, kind in (("n1", RayEngineProcess), ("head", LocalEngineProcess)):
        device = dataclasses.replace(cpu_device(), node=node)
        spec = ReplicaSpec(f"chat-{node}", "chat", entry, device)
        replica = create_replica(entry, device, replica_id=spec.replica_id,
                                 engine_process=executor._engine_process(spec))
        assert isinstance(replica, EngineReplica) and isinstance(replica.process, kind), node
        assert replica.pid is None and not replica.alive  # nothing started
    assert executor.handles() == []
