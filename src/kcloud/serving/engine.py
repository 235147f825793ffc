"""`EngineReplica`: a generative model served by an LLM engine process on one device.

kcloud does not generate tokens itself. A replica of a generative model (`ModelConfig.generative`)
is an engine process (vLLM's OpenAI server, `furiosa-llm serve`, ...) that its runtime plugin
says how to start (`kcloud.runtimes.engine.EngineRuntime.launch`). This module starts it on a
free loopback port, confined to its device, waits until its health route answers, watches it,
and stops it. The gateway passes OpenAI requests through to it (`kcloud.serving.generation`).

It stands beside `kcloud.serving.replica.Replica` in the router with the same surface (`id`,
`entry`, `device`, `alive`, `load`, `pid`, `on_death`, `start`, `stop`), so the control plane's
one owner of replicas (the reconciler and its executor) starts, watches and replaces both kinds
the same way: an engine that exits by itself is a dead replica, replaced like a crashed worker.

The engine runs in its own session (process group), so a Ctrl-C in the terminal reaches only
kcloud, which stops the engines itself; `PR_SET_PDEATHSIG` takes the engine down if kcloud is
killed outright. Its output goes to `<KCLOUD_HOME>/logs/engines/<replica>.log`; a start that
fails quotes the log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from kcloud.devices.device import Device
from kcloud.home import kcloud_home
from kcloud.runtimes.engine import EngineLaunch, EngineModel, EngineRuntime, die_with_parent
from kcloud.runtimes.modelled import check_efficiency, modelled_device_seconds
from kcloud.runtimes.plugin import runtime_for
from kcloud.serving.generation import warm_tokenizer
from kcloud.serving.served import ServedModel
from kcloud.serving.worker import WorkerStartError

if TYPE_CHECKING:
    from kcloud.models.repository import ModelEntry
    from kcloud.serving.replica import WorkRecorder

log = logging.getLogger(__name__)

#: How long an engine may take to answer its health route after it starts. vLLM on a CPU
#: loads a small model in ~30 s (eager); a large model on a GPU or NPU takes minutes.
START_TIMEOUT_S = 900.0
HEALTH_POLL_S = 0.5
#: How long `stop()` lets requests in flight finish before the engine is terminated.
DRAIN_TIMEOUT_S = 10.0
#: SIGTERM, then this long before SIGKILL.
TERMINATE_GRACE_S = 10.0
LOG_TAIL_BYTES = 4000

_counter = itertools.count(1)


def replica_id_for(served_name: str, version: int, device: Device) -> str:
    """A replica id unique in this process (`NAME-vN-DEVICE-PID-K`), for a replica the caller
    did not name (the control plane names its own)."""
    return f"{served_name}-v{version}-{device.id}-{os.getpid()}-{next(_counter)}"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the engine binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def engine_log_dir() -> Path:
    path = kcloud_home() / "logs" / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_tail(path: Path) -> str:
    """The last `LOG_TAIL_BYTES` of an engine's log (empty when unreadable)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class EngineProcess(ABC):
    """Where an engine replica's process runs: on this machine (`LocalEngineProcess`), or on a
    cluster node (`kcloud.cluster.engines.RayEngineProcess`). The replica only spawns it, asks
    whether it still runs, waits for its end and stops it."""

    #: The engine's pid (on its own machine), once spawned.
    pid: int | None = None
    #: Where its log is, in words (a path, or a node's path).
    log_where: str = ""

    @abstractmethod
    async def spawn(self) -> EngineLaunch:
        """Start the engine; how to reach it (its base URL, health and metrics routes)."""

    @abstractmethod
    def returncode(self) -> int | None:
        """Its exit code once it ended, else None."""

    @abstractmethod
    async def wait(self) -> int:
        """Until it ends; its exit code."""

    @abstractmethod
    async def terminate(self) -> None:
        """SIGTERM to its process group, SIGKILL after a grace period; fine when already gone."""

    @abstractmethod
    def log_tail(self) -> str:
        """The end of its log, for error messages."""


class LocalEngineProcess(EngineProcess):
    """The engine as a child process of this one, on a free loopback port."""

    def __init__(self, runtime: EngineRuntime, model: EngineModel, device: Device, threads: int | None,
                 log_path: Path) -> None:
        self.runtime, self.model, self.device, self.threads = runtime, model, device, threads
        self.log_path = log_path
        self.log_where = str(log_path)
        self._process: asyncio.subprocess.Process | None = None

    async def spawn(self) -> EngineLaunch:
        port = free_loopback_port()
        launch = self.runtime.launch(self.model, self.device, port=port, threads=self.threads)
        with self.log_path.open("wb") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                *launch.argv, env=os.environ | launch.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT, preexec_fn=die_with_parent)
        self.pid = self._process.pid
        return launch

    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def terminate(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), TERMINATE_GRACE_S)
            except TimeoutError:
                log.warning("engine pid %s did not stop within %.0f s of SIGTERM: killed", process.pid,
                            TERMINATE_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process is not None:  # the engine's own children (vLLM's engine core) share its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return log_tail(self.log_path)


#: Makes the process of an engine replica elsewhere: (runtime, model, device, threads, replica id).
EngineProcessFactory = Callable[[EngineRuntime, EngineModel, Device, "int | None", str], EngineProcess]


class EngineReplica:
    """One engine process serving one generative model version on one device."""

    def __init__(
        self,
        replica_id: str,
        entry: ModelEntry,
        device: Device,
        runtime: EngineRuntime,
        *,
        threads: int | None = None,
        emulation: WorkRecorder | None = None,
        efficiency: float | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        process: EngineProcessFactory | None = None,
        served_name: str | None = None,
    ) -> None:
        generation = entry.config.generation
        if generation is None:
            raise ValueError(f"{entry.name} is not a generative model")
        self.id = replica_id
        self.entry = entry
        #: What requests name it by (its deployment's name; by default the model's), and the
        #: name its engine serves the model under.
        self.served = ServedModel.of(entry, served_name)
        self.device = device
        self.runtime = runtime
        self.threads = threads
        self.emulation = emulation
        check_efficiency(efficiency)
        #: A what-if fraction of peak for the modelled time; `None`: the chip's own factor.
        self.efficiency = efficiency
        self.start_timeout_s = start_timeout_s
        self.model = EngineModel(
            checkpoint=entry.path,
            served_name=self.served.name,
            context_length=generation.context_length,
            kv_cache_bytes=generation.kv_cache_bytes,
            dtype=generation.dtype,
        )
        self.on_death: list[Callable[[EngineReplica], None]] = []
        self.launch: EngineLaunch | None = None
        self.process = (process(runtime, self.model, device, threads, replica_id) if process is not None
                        else LocalEngineProcess(runtime, self.model, device, threads,
                                                engine_log_dir() / f"{replica_id}.log"))
        #: Seconds from spawn to a healthy answer, once started (an event and a metric).
        self.start_seconds: float | None = None
        #: Prompt plus maximum new tokens of the requests in flight: the router's load figure.
        self.outstanding_tokens = 0
        self.in_flight = 0
        self._client: httpx.AsyncClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._death_reported = False
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return (f"EngineReplica({self.id!r}, {self.runtime.name}, device={self.device.uid!r}, "
                f"alive={self.alive}, outstanding_tokens={self.outstanding_tokens})")

    # -- state ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._started and not self._stopping and self.process.returncode() is None

    @property
    def load(self) -> int:
        return self.outstanding_tokens

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def base_url(self) -> str:
        if self.launch is None:
            raise RuntimeError(f"replica {self.id} is not started")
        return self.launch.base_url

    @property
    def client(self) -> httpx.AsyncClient:
        """The connection pool to this engine (kept alive across requests)."""
        if self._client is None:
            raise RuntimeError(f"replica {self.id} is not started")
        return self._client

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the engine and wait until it is healthy; `WorkerStartError` (quoting the
        engine's log) when it exits or does not answer within `start_timeout_s`."""
        started = time.monotonic()
        self.launch = await self.process.spawn()
        self._client = httpx.AsyncClient(
            base_url=self.launch.base_url,
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        log.info("%s: starting %s for %s on %s (pid %s, %s, log %s)", self.id, self.runtime.name,
                 self.served.name, self.device.uid, self.process.pid, self.launch.base_url,
                 self.process.log_where)
        try:
            await self._wait_healthy(started)
        except BaseException:
            await self._terminate()
            raise
        # The gateway's tokenizer and chat template for this model, loaded now rather than by the
        # first request (which would wait ~0.5 s for it).
        await asyncio.to_thread(warm_tokenizer, self.entry)
        self.start_seconds = time.monotonic() - started
        self._started = True
        self._watch = asyncio.get_running_loop().create_task(self._watch_process())
        log.info("%s: %s serves %s after %.1f s", self.id, self.runtime.name, self.served.name,
                 self.start_seconds)

    async def _wait_healthy(self, started: float) -> None:
        assert self.launch is not None and self._client is not None
        while True:
            code = self.process.returncode()
            if code is not None:
                raise WorkerStartError(
                    f"{self.runtime.name} for {self.served.name} on {self.device.uid} exited with code "
                    f"{code} while starting; the end of its log {self.process.log_where}:\n"
                    f"{self.process.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                answer = await self._client.get(self.launch.health_path, timeout=2.0)
                if answer.status_code == 200:
                    return
            if time.monotonic() - started > self.start_timeout_s:
                raise WorkerStartError(
                    f"{self.runtime.name} for {self.served.name} on {self.device.uid} did not answer "
                    f"{self.launch.health_path} within {self.start_timeout_s:.0f} s; the end of its log "
                    f"{self.process.log_where}:\n{self.process.log_tail()}")
            await asyncio.sleep(HEALTH_POLL_S)

    async def _watch_process(self) -> None:
        code = await self.process.wait()
        if self._stopping or self._death_reported:
            return
        self._death_reported = True
        log.error("%s: %s (pid %s) exited with code %s; the end of its log:\n%s", self.id,
                  self.runtime.name, self.process.pid, code, self.process.log_tail())
        for observer in list(self.on_death):
            try:
                observer(self)
            except Exception:  # an observer's bug must not break the serving path
                log.exception("%s: replica-death observer failed", self.id)

    async def stop(self) -> None:
        """Take no new requests, let those in flight finish (up to a timeout), then terminate
        the engine's whole process group."""
        if self._stopping:
            return
        self._stopping = True
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT_S)
        await self._terminate()
        if self._watch is not None:
            self._watch.cancel()

    async def _terminate(self) -> None:
        await self.process.terminate()
        if self._client is not None:
            await self._client.aclose()

    # -- requests ---------------------------------------------------------------------------
    def begin(self, tokens: int) -> None:
        """A request with `tokens` (prompt plus most new tokens) goes to this engine."""
        self.in_flight += 1
        self.outstanding_tokens += tokens
        self._idle.clear()

    def end(self, tokens: int, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """That request finished; `prompt_tokens`/`completion_tokens` as the engine counted them
        (0 when unknown) give an emulated device its modelled work.

        Compute term only: the engine batches requests continuously, so the weights it reads per
        step are shared by requests this replica cannot see; none is charged to one request."""
        self.in_flight -= 1
        self.outstanding_tokens -= tokens
        if self.in_flight == 0:
            self._idle.set()
        if self.device.emulated and self.emulation is not None:
            flops = self.entry.config.generation.flops_per_token if self.entry.config.generation else None
            modelled = modelled_device_seconds(flops, prompt_tokens + completion_tokens, self.device.spec,
                                               efficiency=self.efficiency)
            if modelled.seconds is not None:
                self.emulation.record_work(self.device.uid, modelled.seconds)


def create_engine_replica(
    entry: ModelEntry,
    device: Device,
    *,
    threads: int | None = None,
    emulation: WorkRecorder | None = None,
    replica_id: str | None = None,
    efficiency: float | None = None,
    process: EngineProcessFactory | None = None,
    served_name: str | None = None,
) -> EngineReplica:
    """An engine replica of the generative `entry` on `device`, served as `served_name`, not yet
    started (its process on this machine, or where `process` makes it).

    `UnsupportedDeviceError` when no installed engine runtime serves the device (its message
    names what each runtime said)."""
    runtime = runtime_for(device, entry.config.platform)
    if not isinstance(runtime, EngineRuntime):
        raise TypeError(f"runtime {runtime.name} of {entry.config.platform} models is not an engine runtime")
    replica_id = replica_id or replica_id_for(served_name or entry.name, entry.version, device)
    return EngineReplica(replica_id, entry, device, runtime, threads=threads, emulation=emulation,
                         efficiency=efficiency, process=process, served_name=served_name)
