"""Executors: what actually starts and stops a replica somewhere. The reconciler drives one.

The protocol is deliberately narrow, three calls and a listing, so that where replicas run is
the executor's business alone:

- `LocalExecutor` (here): replicas on this machine, each in its own worker process
  (`kcloud.serving.replica.create_replica(..., isolation="process")`), routed by this
  process's `Router`.
- `kcloud.cluster.executor.RayExecutor` (the `[cluster]` extra) is a `LocalExecutor` whose
  workers are sessions in Ray actors on the node that holds `spec.device`; `ReplicaHandle.address`
  carries the actor id, which the database keeps. The reconciler needs no change: it only ever
  sees `ReplicaSpec`, `ReplicaHandle` and these calls.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from kcloud.devices.device import Device
from kcloud.models.partition import Partition
from kcloud.models.repository import ModelEntry
from kcloud.serving.engine import EngineProcessFactory, EngineReplica
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import Isolation, Replica, WorkerFactory, WorkRecorder, create_replica
from kcloud.serving.router import Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaSpec:
    """What to run: one replica of a model version on one device, served as its deployment."""

    replica_id: str
    deployment: str
    entry: ModelEntry
    device: Device
    #: Intra-op threads (None: the executor's choice, by default the runtime's layout).
    threads: int | None = None
    #: A pipeline replica: the graph's stages, and one device per stage (the first is `device`).
    stages: Partition | None = None
    stage_devices: tuple[Device, ...] = ()


@dataclass(frozen=True)
class ReplicaHandle:
    """How to find a started replica again; stored in the database as JSON (`as_json`)."""

    replica_id: str
    executor: str
    pid: int | None = None
    #: Where it runs: a Ray actor id for remote executors, an LLM engine's loopback URL; else None.
    address: str | None = None
    #: Seconds from spawn to serving (measured by the replica), for its `replica.started` event.
    start_seconds: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Executor(Protocol):
    name: str

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start the replica and make it serve; raise (any exception) when it cannot."""

    async def stop(self, handle: ReplicaHandle) -> None:
        """Stop serving from it and release it; stopping a dead or unknown replica is fine."""

    def alive(self, handle: ReplicaHandle) -> bool:
        """Whether it is running and can serve."""

    def handles(self) -> list[ReplicaHandle]:
        """Every replica this executor started and has not stopped (alive or not)."""


_sigint_lock = threading.Lock()
_sigint_users = 0
_sigint_saved: Any = None


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Spawn workers with SIGINT ignored, so Ctrl-C reaches only the server, which drains them.

    (An ignored signal stays ignored across exec; the server stops its workers itself.) Starts
    overlap (the reconciler starts several replicas at once), so the server's own handler is
    saved by the first and put back by the last: restoring per start could leave SIGINT ignored.
    """
    global _sigint_users, _sigint_saved
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _sigint_lock:
        if _sigint_users == 0:
            _sigint_saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
        _sigint_users += 1
    try:
        yield
    finally:
        with _sigint_lock:
            _sigint_users -= 1
            if _sigint_users == 0:
                signal.signal(signal.SIGINT, _sigint_saved)
                _sigint_saved = None


class LocalExecutor:
    """Replicas in worker processes on this machine, added to (and removed from) the router."""

    name = "local"

    def __init__(
        self,
        router: Router,
        *,
        emulation: WorkRecorder | None = None,
        metrics: ServingMetrics | None = None,
        isolation: Isolation = "process",
        threads: int | None = None,
    ) -> None:
        self.router = router
        self.emulation = emulation
        self.metrics = metrics
        self.isolation = isolation
        self.threads = threads
        self._replicas: dict[str, Replica | EngineReplica] = {}
        #: Replicas whose worker died (the router tells us), as opposed to ones stopped on purpose:
        #: when the server shuts down, the router stops every replica, and that is no death.
        self._dead: set[str] = set()
        router.on_replica_died.append(self._died)

    def _died(self, replica: Replica | EngineReplica) -> None:
        if replica.id in self._replicas:
            self._dead.add(replica.id)

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        started = time.monotonic()
        replica = create_replica(
            spec.entry,
            spec.device,
            isolation=self.isolation,
            threads=spec.threads if spec.threads is not None else self.threads,
            emulation=self.emulation if any(d.emulated for d in (spec.device, *spec.stage_devices)) else None,
            metrics=self.metrics,
            replica_id=spec.replica_id,
            worker_factory=self._worker_factory(spec),
            stages=spec.stages,
            stage_devices=spec.stage_devices,
            engine_process=self._engine_process(spec),
            served_name=spec.deployment,
        )
        with _children_ignore_sigint():
            await replica.start()
        try:
            self.router.add_replica(replica)
        except BaseException:
            await replica.stop()
            raise
        self._replicas[spec.replica_id] = replica
        return self._handle(spec, replica, started)

    def _worker_factory(self, spec: ReplicaSpec) -> WorkerFactory | None:
        """Where the replica's session runs; None: on this machine, by `isolation` (a subclass
        puts it elsewhere: `kcloud.cluster.executor.RayExecutor`)."""
        return None

    def _engine_process(self, spec: ReplicaSpec) -> EngineProcessFactory | None:
        """Where an engine replica's process runs; None: a child of this process (a subclass puts
        it on the device's node: `kcloud.cluster.executor.RayExecutor`)."""
        return None

    def _handle(self, spec: ReplicaSpec, replica: Replica | EngineReplica, started: float) -> ReplicaHandle:
        if isinstance(replica, EngineReplica):
            return ReplicaHandle(spec.replica_id, self.name, pid=replica.pid, address=replica.base_url,
                                 start_seconds=replica.start_seconds)
        return ReplicaHandle(spec.replica_id, self.name, pid=replica.pid)

    async def stop(self, handle: ReplicaHandle) -> None:
        died = handle.replica_id in self._dead
        self._dead.discard(handle.replica_id)
        replica = self._replicas.pop(handle.replica_id, None)
        # A dead replica is replaced by the reconciler: its model stays served (unready) meanwhile.
        removed = await self.router.remove_replica(handle.replica_id, replaced=died)
        if removed is None and replica is not None:
            await replica.stop()

    def alive(self, handle: ReplicaHandle) -> bool:
        """False once its worker died. A replica the router stopped (shutdown) is not dead."""
        return handle.replica_id in self._replicas and handle.replica_id not in self._dead

    def handles(self) -> list[ReplicaHandle]:
        return [ReplicaHandle(rid, self.name, pid=r.pid) for rid, r in self._replicas.items()]

    def replica(self, replica_id: str) -> Replica | EngineReplica | None:
        return self._replicas.get(replica_id)
