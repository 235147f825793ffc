"""`RayExecutor`: replicas on the nodes of a Ray cluster, requests on kcloud's own path.

Each replica is a `ReplicaHost` actor, pinned by its device's Ray resource to the node and
device placement chose (`kcloud.cluster.resources`). The actor builds the session there with
the device's visibility environment from the runtime plugin, and listens on its node's
address; the gateway's `Replica` (batcher, pipeline, metrics: the same as for a local replica)
sends it batches over one TCP connection with the framing a local worker's pipe uses
(`SocketWorker`). Ray places, starts and kills the process, and notices a dead node; the data
path never enters Ray's object store or task scheduler. A node without the model file gets it
once through the object store (`kcloud.cluster.shipping`). An LLM engine replica on another
node than the head's is an `EngineHost` actor's process there (`kcloud.cluster.engines`).

Everything else is `LocalExecutor`'s: the router, death reports, handles. The reconciler does
not know which executor it drives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kcloud.cluster.engines import RayEngineProcess
from kcloud.cluster.host import ReplicaHost
from kcloud.cluster.ray_node import NAMESPACE
from kcloud.cluster.resources import actor_gpus, actor_resources
from kcloud.cluster.shipping import Shipments
from kcloud.devices.device import Device
from kcloud.farm.executor import LocalExecutor, ReplicaHandle, ReplicaSpec
from kcloud.runtimes.engine import EngineModel, EngineRuntime
from kcloud.runtimes.session import worker_environment
from kcloud.serving.engine import EngineProcess, EngineProcessFactory, EngineReplica
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import Replica, WorkerFactory, WorkRecorder
from kcloud.serving.router import Router
from kcloud.serving.worker import SocketWorker, Worker, WorkerStartError

log = logging.getLogger(__name__)

#: How long a replica's actor may take to be scheduled and listen. Longer means the node is
#: gone or full; the start fails and placement keeps the deployment off that device a while.
START_TIMEOUT_S = 30.0
#: How often a start that waits for its actor checks that the node is still in the cluster.
NODE_CHECK_S = 0.5


class RayWorker(SocketWorker):
    """A `SocketWorker` whose session it first starts in a `ReplicaHost` actor on the device's node."""

    def __init__(self, weights_path: Path, device: Device, *, threads: int,
                 node_alive: Callable[[str], bool] = lambda node: True,
                 start_timeout_s: float = START_TIMEOUT_S, shipments: Shipments | None = None) -> None:
        super().__init__(weights_path, device, threads=threads)
        self.shipments = shipments or Shipments()
        self.node_alive = node_alive
        self.start_timeout_s = start_timeout_s
        self.actor: Any = None
        self.actor_id: str | None = None

    async def start(self) -> None:
        import ray
        from ray.exceptions import RayError

        if not self.node_alive(self.device.node):
            raise WorkerStartError(f"node {self.device.node} is not in the cluster")
        try:
            env = worker_environment(self.device)
        except Exception as exc:  # no runtime serves the device, or its index is unknown
            raise WorkerStartError(f"{type(exc).__name__}: {exc}") from exc
        self.actor = ray.remote(ReplicaHost).options(
            num_cpus=0, num_gpus=actor_gpus(self.device), resources=actor_resources(self.device),
            max_restarts=0, namespace=NAMESPACE,
        ).remote()
        self.actor_id = self.actor._actor_id.hex()
        sha256, shipped = self.shipments.ship(Path(self.weights_path))
        opened = asyncio.ensure_future(self.actor.open.remote(
            str(self.weights_path), self.device, self.threads, env, self.authkey, sha256, [shipped]))
        try:
            host, port, _pid = await self._until_open(opened)
        except RayError as exc:
            self._kill()
            cause = getattr(exc, "cause", None) or exc
            raise WorkerStartError(f"on node {self.device.node}: {cause}") from None
        except BaseException:  # the start was abandoned (the server stopping): no actor is left
            self._kill()
            raise
        self.address = (host, port)
        try:
            await super().start()
        except BaseException:
            self._kill()
            raise

    async def _until_open(self, opened: asyncio.Future[tuple[str, int, int]]) -> tuple[str, int, int]:
        """The actor's answer; WorkerStartError when it takes longer than `start_timeout_s`, or
        at once when the node leaves the cluster meanwhile (Ray would wait for it for ever)."""
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not opened.done():
                left = deadline - time.monotonic()
                if left <= 0 or not self.node_alive(self.device.node):
                    self._kill()
                    why = ("it left the cluster" if left > 0 else
                           f"not within {self.start_timeout_s:.0f} s (is its device resource taken?)")
                    raise WorkerStartError(f"node {self.device.node} did not start the replica: {why}")
                await asyncio.wait({opened}, timeout=min(left, NODE_CHECK_S))
        except BaseException:
            # Nobody will hear the answer now (given up, or this start cancelled as the server
            # stops): cancelled, it cannot end later as a "Task exception was never retrieved".
            opened.cancel()
            raise
        return opened.result()

    async def close(self) -> None:
        await super().close()
        self._kill()

    def _kill(self) -> None:
        if self.actor is None:
            return
        import ray

        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # already gone with its node
            log.debug("killing replica actor %s: %s", self.actor_id, exc)
        self.actor = None


class RayExecutor(LocalExecutor):
    """Replicas as `ReplicaHost` actors on the cluster's nodes (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        router: Router,
        *,
        emulation: WorkRecorder | None = None,
        metrics: ServingMetrics | None = None,
        threads: int | None = None,
        node_alive: Callable[[str], bool] = lambda node: True,
        start_timeout_s: float = START_TIMEOUT_S,
        head_node: str | None = None,
    ) -> None:
        super().__init__(router, emulation=emulation, metrics=metrics, isolation="process", threads=threads)
        self.node_alive = node_alive
        self.start_timeout_s = start_timeout_s
        self.head_node = head_node
        #: Model files put into the object store for nodes that do not have them (one per content).
        self.shipments = Shipments()

    def _engine_process(self, spec: ReplicaSpec) -> EngineProcessFactory | None:
        """An engine on the head's node is the gateway's child; elsewhere an `EngineHost` actor's."""
        if spec.device.node == self.head_node:
            return None
        shipments = self.shipments

        def make(runtime: EngineRuntime, model: EngineModel, device: Device, threads: int | None,
                 replica_id: str) -> EngineProcess:
            return RayEngineProcess(runtime, model, device, threads, replica_id, shipments=shipments)
        return make

    def _worker_factory(self, spec: ReplicaSpec) -> WorkerFactory | None:
        if spec.entry.config.generative:
            return None  # an engine replica: its process is `_engine_process`'s

        def make(weights_path: Path, device: Device, threads: int) -> Worker:
            return RayWorker(weights_path, device, threads=threads, node_alive=self.node_alive,
                             start_timeout_s=self.start_timeout_s, shipments=self.shipments)
        return make

    def _handle(self, spec: ReplicaSpec, replica: Replica | EngineReplica, started: float) -> ReplicaHandle:
        worker = replica.worker if isinstance(replica, Replica) else None
        if isinstance(worker, RayWorker):
            return ReplicaHandle(spec.replica_id, self.name, pid=worker.pid, address=worker.actor_id,
                                 start_seconds=time.monotonic() - started)
        return super()._handle(spec, replica, started)

