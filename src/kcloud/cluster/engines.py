"""LLM engine replicas on cluster nodes: the engine process runs on the node placement chose.

An engine replica (vLLM, furiosa-llm) is a process speaking OpenAI's HTTP API. On the head's own
node the gateway starts it as a child (`kcloud.serving.engine.LocalEngineProcess`). On another
node an `EngineHost` actor, pinned there by the device's Ray resource like a `ReplicaHost`,
starts it: with the checkpoint at the head's path where the node has the same files, else a copy
shipped once through the object store (`kcloud.cluster.shipping`); listening on the node's
address, so the gateway relays requests to it directly; and in a process group that dies with the
actor, so a node that leaves takes its engines with it. `RayEngineProcess` is the head's handle
on it: the `EngineReplica` (health checks, routing, metering: the same as for a local engine)
only spawns, watches and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from kcloud.cluster.ray_node import NAMESPACE
from kcloud.cluster.resources import actor_gpus, actor_resources
from kcloud.cluster.shipping import Files, Shipments, local_checkpoint
from kcloud.devices.device import Device
from kcloud.home import kcloud_home
from kcloud.runtimes.engine import EngineLaunch, EngineModel, EngineRuntime, die_with_parent
from kcloud.runtimes.plugin import installed_runtimes
from kcloud.serving.engine import TERMINATE_GRACE_S, EngineProcess, log_tail
from kcloud.serving.worker import WorkerStartError

log = logging.getLogger(__name__)

#: How long an engine's actor may take to be scheduled, fetch the checkpoint and spawn the engine
#: (the engine's own loading is then watched by the replica's health checks).
SPAWN_TIMEOUT_S = 300.0


class EngineHost:
    """One engine process on this node (a Ray actor; see the module docstring)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(
        self,
        runtime_name: str,
        model: EngineModel,
        files: Files,
        device: Device,
        threads: int | None,
        replica_id: str,
    ) -> tuple[EngineLaunch, int, str]:
        """Spawn the engine; (its launch, pid, log path on this node)."""
        import ray

        runtime = next(
            (r for r in installed_runtimes() if r.name == runtime_name and isinstance(r, EngineRuntime)), None
        )
        if runtime is None:
            raise RuntimeError(f"engine runtime {runtime_name} is not installed on node {device.node}")
        checkpoint = local_checkpoint(
            str(model.checkpoint), files, lambda shipped: ray.get(shipped[0]), node=device.node
        )
        host = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        launch = runtime.launch(
            dataclasses.replace(model, checkpoint=Path(checkpoint)),
            device,
            port=port,
            threads=threads,
            host=host,
        )
        self.log_path = kcloud_home() / "logs" / "engines" / f"{replica_id}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                launch.argv,
                env=os.environ | launch.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        return launch, self.process.pid, str(self.log_path)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "engine pid %s did not stop within %.0f s of SIGTERM: killed",
                    process.pid,
                    TERMINATE_GRACE_S,
                )
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the engine's own children
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log_tail(self) -> str:
        return log_tail(self.log_path) if self.log_path is not None else ""


class RayEngineProcess(EngineProcess):
    """The head's handle on an engine an `EngineHost` runs on the device's node."""

    def __init__(
        self,
        runtime: EngineRuntime,
        model: EngineModel,
        device: Device,
        threads: int | None,
        replica_id: str,
        *,
        shipments: Shipments,
        spawn_timeout_s: float = SPAWN_TIMEOUT_S,
    ) -> None:
        self.runtime, self.model, self.device, self.threads = runtime, model, device, threads
        self.replica_id = replica_id
        self.shipments = shipments
        self.spawn_timeout_s = spawn_timeout_s
        self.log_where = f"(on node {device.node})"
        self.actor: Any = None
        self._code: int | None = None
        self._waiter: asyncio.Future[int] | None = None

    async def spawn(self) -> EngineLaunch:
        import ray
        from ray.exceptions import RayError

        self.actor = (
            ray.remote(EngineHost)
            .options(
                num_cpus=0,
                num_gpus=actor_gpus(self.device),
                resources=actor_resources(self.device),
                max_restarts=0,
                max_concurrency=4,
                namespace=NAMESPACE,
            )
            .remote()
        )
        files = await asyncio.to_thread(self.shipments.ship_dir, self.model.checkpoint)
        started = self.actor.start.remote(
            self.runtime.name, self.model, files, self.device, self.threads, self.replica_id
        )
        try:
            launch, self.pid, where = await asyncio.wait_for(
                asyncio.wrap_future(started.future()), self.spawn_timeout_s
            )
        except (RayError, TimeoutError) as exc:
            self._kill()
            cause = getattr(exc, "cause", None) or exc
            why = (
                f"not within {self.spawn_timeout_s:.0f} s"
                if isinstance(exc, TimeoutError)
                else f"{type(cause).__name__}: {cause}"
            )
            raise WorkerStartError(
                f"node {self.device.node} did not start {self.runtime.name}: {why}"
            ) from None
        self.log_where = f"{where} on node {self.device.node}"
        self._waiter = asyncio.ensure_future(self._wait_remote())
        return launch

    async def _wait_remote(self) -> int:
        from ray.exceptions import RayError

        try:
            code = int(await self.actor.wait.remote())
        except RayError:  # the actor, or its whole node, is gone
            code = -1
        self._code = code
        return code

    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        assert self._waiter is not None
        return await asyncio.shield(self._waiter)

    async def terminate(self) -> None:
        if self.actor is None:
            return
        with contextlib.suppress(Exception):  # an actor whose node is gone has nothing to stop
            await asyncio.wait_for(
                asyncio.wrap_future(self.actor.stop.remote().future()), TERMINATE_GRACE_S + 5
            )
        self._kill()

    def _kill(self) -> None:
        if self.actor is None:
            return
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)
        self.actor = None

    def log_tail(self) -> str:
        if self.actor is None:
            return ""
        import ray

        try:
            return str(ray.get(self.actor.log_tail.remote(), timeout=5))
        except Exception as exc:  # the node is gone with its log
            return f"(the log on node {self.device.node} is unreachable: {type(exc).__name__})"
