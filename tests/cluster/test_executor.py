"""`RayExecutor` decisions that need no cluster: an LLM engine replica is refused on a node other
than the head's (it would run on the head while claiming that node's device)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import cpu_device

from kcloud.cluster.executor import EngineElsewhereError, RayExecutor
from kcloud.farm.executor import ReplicaSpec
from kcloud.models.builtin import SMOLLM
from kcloud.serving.router import Router


def test_an_engine_replica_on_another_node_is_refused_with_the_reason(builtin_repository):
    executor = RayExecutor(Router(builtin_repository), head_node="head")
    entry = builtin_repository.get(SMOLLM)
    elsewhere = dataclasses.replace(cpu_device(), node="n1")
    with pytest.raises(EngineElsewhereError, match=r"run on the head's node \(head\) only.*not on n1"):
        asyncio.run(executor.start(ReplicaSpec("chat-1", "chat", entry, elsewhere)))
    assert executor.handles() == []
