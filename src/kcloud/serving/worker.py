"""Workers: what runs a replica's collated batches on its device.

A worker is the only part of a replica that touches the runtime. The replica's batcher stays
on the event loop and hands the worker one batch at a time; the worker computes it somewhere
else so the loop never blocks:

- `ThreadWorker`: the session lives in this process and runs in the worker's own thread
  (ONNX Runtime releases the GIL while it computes). Least overhead; a crash in the runtime
  takes the server with it.
- `ProcessWorker`: the session lives in a spawned child process; feeds and outputs cross a
  pipe, pickled once per batch. A crash or kill of the child fails only the batches in flight
  (`ReplicaDiedError`, which the router retries elsewhere), and the child ends when the
  server dies. The child gets its device's visibility environment from the runtime that
  serves it (`worker_environment`: `CUDA_VISIBLE_DEVICES` for an NVIDIA GPU, nothing for a
  CPU), so it sees only its own device.
- `SocketWorker`: the session on another machine (a node of a Ray cluster), over one TCP
  connection with the same messages as the pipe (`multiprocessing.connection` framing, after
  an HMAC challenge with a per-replica key). `ProcessWorker` and `SocketWorker` share that
  protocol in `ConnectionWorker`; only where the other end is differs.

`run` may be called again before an earlier call has returned: batches run one at a time, in
the order they were sent. The replica keeps a second batch waiting on the worker that way, so
the device starts it the moment the first is done instead of idling while the gateway's event
loop (busy with HTTP) gets round to answering and dispatching (measured: a child waited ~5 %
of its time on its pipe with one batch at a time).

The interface is deliberately small:

    async start() -> None              build the session (raises if it cannot)
    async run(feeds) -> Computed       one batch; ReplicaDiedError when the worker is gone
    alive: bool                        False once the worker died or was closed
    async close() -> None              release the session / process
    pid: int | None                    the process computing (None for in-process threads)
    provider: str | None               execution provider the session took (after start)
    on_death: Callable[[], None] | None   called once when the worker dies by itself
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

import numpy as np

from kcloud.devices.device import Device
from kcloud.runtimes.child import Reply, Requests, run_batch, serve_session
from kcloud.runtimes.plugin import RUNTIME_NOTE, ExecutionPlan
from kcloud.runtimes.session import create_session, session_provider, worker_environment
from kcloud.serving.errors import InferenceFailedError, ReplicaDiedError

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]

#: How long `close()` waits for a child to finish its batch and exit before killing it.
CLOSE_GRACE_S = 5.0


@dataclass(frozen=True)
class Computed:
    """One batch's outputs and the time the runtime spent on it (not the time it waited behind
    another batch on the worker). `live` says which requests were computed, when some were left
    out because their deadline passed before the batch started (None: all were)."""

    outputs: Outputs | None
    seconds: float
    live: list[bool] | None = None

    @classmethod
    def from_reply(cls, reply: Reply, device_uid: str) -> Computed:
        status, payload, seconds, live = reply
        if status == "error":
            raise InferenceFailedError(f"runtime failed on {device_uid}: {payload}")
        return cls(payload, seconds, live)  # type: ignore[arg-type]


class WorkerStartError(RuntimeError):
    """The worker could not build its session (bad model file, unsupported device, ...)."""


class Worker(ABC):
    """Runs batches one at a time, in order, on one device. See the module docstring."""

    pid: int | None = None
    provider: str | None = None
    on_death: Callable[[], None] | None = None

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def run(self, feeds: Feeds, requests: Requests) -> Computed:
        """Compute one batch: `requests` gives each request's rows and deadline, in order
        (`kcloud.runtimes.child.run_batch`). InferenceFailedError if the runtime fails."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...


class ThreadWorker(Worker):
    """The session in this process, computed in a dedicated thread."""

    def __init__(self, weights_path: str | Path, device: Device, *, threads: int) -> None:
        self.weights_path = Path(weights_path)
        self.device = device
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{device.id}")
        self._session: Any = None
        self._names: list[str] = []
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._session = await loop.run_in_executor(
                self._executor, lambda: create_session(self.weights_path, self.device, threads=self.threads))
        except Exception as exc:
            raise WorkerStartError(f"{type(exc).__name__}: {exc}") from exc
        self._names = [output.name for output in self._session.get_outputs()]
        self.provider = session_provider(self._session)

    async def run(self, feeds: Feeds, requests: Requests) -> Computed:
        if not self.alive:
            raise ReplicaDiedError(f"worker on {self.device.uid} is closed")
        reply = await asyncio.get_running_loop().run_in_executor(
            self._executor, run_batch, self._session, self._names, feeds, requests)
        return Computed.from_reply(reply, self.device.uid)

    @property
    def alive(self) -> bool:
        return self._session is not None and not self._closed

    async def close(self) -> None:
        self._closed = True
        # Waits for a batch still computing, so the session is not freed under it.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._session = None


class ConnectionWorker(Worker):
    """A session behind a `multiprocessing.connection.Connection`: one pickled message per batch
    each way (the protocol of `kcloud.runtimes.child`). Subclasses say where the other end is:
    a spawned child over a pipe (`ProcessWorker`), or a remote host over TCP (`SocketWorker`).

    Batches are sent by one thread and replies read by another, so a large batch never blocks
    the event loop while it crosses the connection, and a second batch can be sent while the
    session computes the first. The session answers in order, so replies resolve the oldest
    waiting call.
    """

    def __init__(self, weights_path: str | Path, device: Device, *, threads: int) -> None:
        self.weights_path = Path(weights_path)
        self.device = device
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pipe-{device.id}")
        #: The session's plan, and its visibility variables as it read them back (after start).
        self.plan: ExecutionPlan | None = None
        self.environment: dict[str, str | None] = {}
        self._conn: Connection | None = None
        self._dead = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: One future per batch sent and not yet answered, oldest first.
        self._waiting: deque[asyncio.Future[Reply]] = deque()

    def _accept_ready(self, reply: Any) -> None:
        """Take the session's first message (`("ready", info)`); WorkerStartError otherwise."""
        if reply[0] != "ready":
            raise WorkerStartError(reply[1])
        info = reply[1]
        self.pid = info["pid"]
        self.provider = info["provider"]
        self.plan = info["plan"]
        self.environment = info["env"]
        if info.get("note"):
            self.device.attributes[RUNTIME_NOTE] = info["note"]

    def _start_reading(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn, self._loop = conn, loop
        threading.Thread(target=self._read_replies, args=(conn, loop), daemon=True,
                         name=f"replies-{self.device.id}").start()

    def _read_replies(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: hands each reply to the loop, until the pipe closes."""
        while True:
            try:
                reply = conn.recv()
            except (EOFError, OSError) as exc:  # the child is gone, or we closed the pipe
                with contextlib.suppress(RuntimeError):  # the loop itself may be closed
                    loop.call_soon_threadsafe(self._pipe_broke, f"pipe broke: {type(exc).__name__}")
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, reply)

    def _deliver(self, reply: Reply) -> None:
        if self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_result(reply)

    def _pipe_broke(self, why: str) -> None:
        self._mark_dead(why)
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(ReplicaDiedError(
                    f"worker {self.pid} for {self.device.uid} died during a batch"))

    async def run(self, feeds: Feeds, requests: Requests) -> Computed:
        if not self.alive:
            raise ReplicaDiedError(f"worker for {self.device.uid} is not running")
        assert self._conn is not None
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append(answered)  # before the send: sends and replies keep one order
        sent = loop.run_in_executor(self._executor, self._conn.send, (feeds, requests))
        try:
            # shielded: once queued, the send must happen, or replies would answer the wrong call
            await asyncio.shield(sent)
        except (EOFError, OSError) as exc:  # BrokenPipe, ConnectionReset: the child is gone
            self._pipe_broke(f"pipe broke: {type(exc).__name__}")
        except Exception as exc:  # could not be pickled: nothing was sent, so no reply will come
            self._waiting.remove(answered)
            raise InferenceFailedError(
                f"cannot send a batch to the worker for {self.device.uid}: {type(exc).__name__}: {exc}"
            ) from exc
        return Computed.from_reply(await answered, self.device.uid)

    @property
    def alive(self) -> bool:
        # Asked on every request: no `exitcode` poll (a waitpid system call each time). A death
        # is noticed by the sentinel reader, or by the connection breaking, and sets `_dead`;
        # until then a batch sent to a dead session fails as `ReplicaDiedError`.
        return self._conn is not None and not self._dead and not self._closing

    async def _send_stop(self) -> None:
        """Tell the session to end (`None`), queued behind a batch in flight on the same thread
        so that batch finishes first; a connection already broken is fine."""
        if self._conn is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.send, None)

    def _stop_watching(self) -> None:
        """Stop whatever besides the connection watches the session for death (none here)."""

    def _mark_dead(self, why: str) -> None:
        self._stop_watching()
        if self._dead or self._closing:
            return
        self._dead = True
        log.error("worker %s for %s died (%s)", self.pid, self.device.uid, why)
        if self.on_death is not None:
            self.on_death()


class ProcessWorker(ConnectionWorker):
    """The session in a spawned child process, over a pipe; the child ends with this process."""

    def __init__(self, weights_path: str | Path, device: Device, *, threads: int) -> None:
        super().__init__(weights_path, device, threads=threads)
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None

    async def start(self) -> None:
        try:
            env = worker_environment(self.device)
        except Exception as exc:  # no runtime serves the device, or its index is unknown
            raise WorkerStartError(f"{type(exc).__name__}: {exc}") from exc
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=serve_session,
            args=(child_conn, str(self.weights_path), self.device, self.threads, os.getpid(), env),
            name=f"kcloud-worker-{self.device.id}",
            daemon=True,  # terminated if this process exits normally
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, process.start)
        child_conn.close()  # only the child holds it now: its death reads as EOF here
        self._process, self._conn = process, parent_conn
        try:
            reply = await loop.run_in_executor(self._executor, parent_conn.recv)
        except (EOFError, OSError):
            exit_code = await self._reap()
            raise WorkerStartError(
                f"worker process for {self.device.uid} exited while starting (exit code {exit_code}); "
                "a script that starts workers needs the `if __name__ == '__main__':` guard "
                "(multiprocessing spawn re-imports the main module)") from None
        try:
            self._accept_ready(reply)
        except WorkerStartError:
            await self._reap()
            raise
        # Notice a death while idle too, without polling: the sentinel turns readable at exit.
        loop.add_reader(process.sentinel, self._on_sentinel)
        self._start_reading(parent_conn, loop)

    def _on_sentinel(self) -> None:
        if self._process is not None:
            self._process.join(0.1)  # reap it, so the log shows its exit code
        self._mark_dead(f"exit code {self._process.exitcode if self._process else None}")

    def _stop_watching(self) -> None:
        if self._loop is not None and self._process is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._process.sentinel)

    async def _reap(self) -> int | None:
        """Wait for the child to exit (killing it after a grace period); its exit code."""
        process = self._process
        if process is None:
            return None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, process.join, CLOSE_GRACE_S)
        if process.exitcode is None:
            process.kill()
            await loop.run_in_executor(None, process.join, CLOSE_GRACE_S)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        exit_code = process.exitcode
        process.close()
        self._process = None
        return exit_code

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        process = self._process
        if process is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(process.sentinel)
        if process.exitcode is None:
            await self._send_stop()
        await self._reap()
        self._executor.shutdown(wait=False)


#: Seconds to open a TCP connection to a remote session, and its keep-alive probing: a peer
#: that vanishes without closing (a node losing power) is noticed within about
#: idle + interval * count seconds instead of the kernel's default two hours.
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 1, 3


class SocketWorker(ConnectionWorker):
    """The session on another host (a node of a Ray cluster), reached over TCP with the same
    framing as a pipe: `multiprocessing.connection` messages, after its HMAC challenge with a
    key only this replica's two ends know. The session serves this one connection; when it
    closes, by `close()` or by the host's death, the worker is done.

    `start()` connects to `address`; a subclass that first has to start the session somewhere
    (`kcloud.cluster.executor.RayWorker`) sets it before calling `SocketWorker.start`.
    """

    def __init__(
        self, weights_path: str | Path, device: Device, *, threads: int,
        address: tuple[str, int] | None = None, authkey: bytes | None = None,
    ) -> None:
        super().__init__(weights_path, device, threads=threads)
        self.address = address
        self.authkey = authkey if authkey is not None else os.urandom(32)

    async def start(self) -> None:
        if self.address is None:
            raise WorkerStartError(f"no address to reach the worker for {self.device.uid}")
        loop = asyncio.get_running_loop()
        host, port = self.address
        try:
            conn = await loop.run_in_executor(self._executor, self._connect)
        except (OSError, EOFError, AuthenticationError) as exc:
            raise WorkerStartError(
                f"cannot reach the worker for {self.device.uid} at {host}:{port}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            reply = await loop.run_in_executor(self._executor, conn.recv)
            self._accept_ready(reply)
        except (OSError, EOFError) as exc:
            conn.close()
            raise WorkerStartError(
                f"the worker for {self.device.uid} at {host}:{port} closed while starting") from exc
        except WorkerStartError:
            conn.close()
            raise
        self._start_reading(conn, loop)

    def _connect(self) -> Connection:
        assert self.address is not None
        sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        except BaseException:
            sock.close()
            raise
        conn = Connection(sock.detach())
        try:  # what `multiprocessing.connection.Client` does, with a connect timeout it lacks
            answer_challenge(conn, self.authkey)
            deliver_challenge(conn, self.authkey)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if not self._dead:
            await self._send_stop()
        if conn is not None:
            conn.close()
        self._executor.shutdown(wait=False)
