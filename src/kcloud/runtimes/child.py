"""The loop a worker child process runs: one ONNX Runtime session behind a pipe.

It lives in `kcloud.runtimes` (not beside the worker) so that a spawned child imports only
numpy, onnxruntime and this package, never the gateway.

Protocol, one message per batch, pickled by `multiprocessing.connection`:
  parent -> child: `(feeds, requests)` (see `run_batch`), or `None` to stop.
  child -> parent: first `("ready", info)` or `("failed", message)` after building the session;
                   then `run_batch`'s reply per batch, in the order the batches came.

The child starts with its runtime's visibility environment (`worker_environment`, e.g.
`CUDA_VISIBLE_DEVICES`), applied before anything builds a session: libraries read those
variables when they first open a device (ONNX Runtime when it creates the first CUDA session,
not on import), so from then on the child sees only its own device, which its library numbers
0, and the session is planned `confined` accordingly. The server's own environment is never
touched: it serves many devices at once.

The child ends when the parent closes its end of the pipe, and also when the parent dies
without closing it (a watchdog thread compares `os.getppid()` with the parent's pid), so a
killed server leaves no orphan holding a device.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from kcloud.devices.device import Device
from kcloud.runtimes.ort import ONNX_PLATFORM
from kcloud.runtimes.plugin import RUNTIME_NOTE, runtime_for
from kcloud.runtimes.session import session_provider

#: How often the child checks that its parent is still alive.
PARENT_CHECK_S = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(0)


#: Rows and monotonic deadline (or None) of each request of a batch, in batch order.
Requests = list[tuple[int, float | None]]
#: `(status, outputs or message or None, seconds in the runtime, live)`; status "ok", "error" or
#: "expired"; `live` says which requests were computed (None: all of them).
Reply = tuple[str, object, float, list[bool] | None]


def live_rows(feeds: dict[str, np.ndarray], requests: Requests) -> tuple[list[bool], dict[str, np.ndarray]]:
    """Which requests' deadlines have not passed yet, and the feeds cut to those requests' rows
    (the feeds' first dimension is the batch, `requests` gives each request's rows in order)."""
    now = time.monotonic()
    live = [deadline is None or deadline > now for _, deadline in requests]
    if any(live) and not all(live):
        keep = np.repeat(live, [rows for rows, _ in requests])
        feeds = {name: value[keep] for name, value in feeds.items()}
    return live, feeds


def run_batch(session: Any, names: list[str], feeds: dict[str, np.ndarray], requests: Requests) -> Reply:
    """Run one batch, leaving out the requests whose deadline passed before it started.

    A batch can wait on the worker behind another one (replicas keep two there), so a deadline
    can pass after the batch left the queue: those rows are cut from the feeds (whose first
    dimension is the batch) and never computed; the replica answers those requests 504.
    """
    live, feeds = live_rows(feeds, requests)
    if not any(live):
        return ("expired", None, 0.0, live)
    started = time.perf_counter()
    try:
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as exc:  # an ORT failure fails this batch, not the worker
        return ("error", f"{type(exc).__name__}: {exc}", time.perf_counter() - started, None)
    return ("ok", outputs, time.perf_counter() - started, None if all(live) else live)


def serve_session(
    conn: Connection, weights_path: str | Path, device: Device, threads: int, parent_pid: int,
    env: dict[str, str] | None = None,
) -> None:
    """Entry point of a worker child (target of `multiprocessing` spawn).

    `env` is the device's visibility environment (see the module docstring); `{}` for a CPU.
    The ready message reports the plan and the variables as this process reads them back.
    """
    env = env or {}
    os.environ.update(env)  # first: before any library opens a device
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="orphan-watch").start()
    try:
        runtime = runtime_for(device, ONNX_PLATFORM)
        plan = runtime.plan(device, confined=bool(env))
        session = runtime.create_session(Path(weights_path), device, plan, threads=threads)
    except Exception as exc:  # report any failure to build the session to the parent, then end
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    names = [output.name for output in session.get_outputs()]
    conn.send(("ready", {
        "pid": os.getpid(),
        "provider": session_provider(session),
        "note": device.attributes.get(RUNTIME_NOTE),
        "plan": plan,
        "env": {name: os.environ.get(name) for name in env},
    }))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # parent gone
        if message is None:
            break
        reply = run_batch(session, names, *message)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    conn.close()
