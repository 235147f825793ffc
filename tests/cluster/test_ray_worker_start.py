"""A replica start that is abandoned while its actor is still being scheduled leaves nothing behind.

When the server stops during a start on a cluster node (or a node leaves the moment the head
stops), the task waiting for the `ReplicaHost` actor's answer is cancelled. The answer must be
cancelled with it: left pending, it later ended with `ActorDiedError` as an asyncio "Task exception
was never retrieved" in the head's log. No Ray is needed: the actor's answer is a plain future.
"""

from __future__ import annotations

import asyncio

import pytest

from kcloud.cluster.executor import RayWorker
from kcloud.devices.inventory import Inventory


def _worker(node_alive=lambda node: True) -> RayWorker:
    cpu = next(d for d in Inventory.build((), include_local=True) if d.spec.kind == "cpu")
    return RayWorker("model.onnx", cpu, threads=1, node_alive=node_alive)  # type: ignore[arg-type]


def test_a_cancelled_start_cancels_the_actors_pending_answer() -> None:
    async def body() -> asyncio.Future:
        opened: asyncio.Future = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(_worker()._until_open(opened))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return opened

    assert asyncio.run(body()).cancelled()


def test_a_node_that_leaves_during_the_start_is_a_clear_error_and_cancels_the_answer() -> None:
    from kcloud.serving.worker import WorkerStartError

    async def body() -> asyncio.Future:
        opened: asyncio.Future = asyncio.get_running_loop().create_future()
        with pytest.raises(WorkerStartError, match="did not start the replica: it left the cluster"):
            await _worker(node_alive=lambda node: False)._until_open(opened)
        return opened

    assert asyncio.run(body()).cancelled()
