"""The loop a worker child process runs: one ONNX Runtime session behind a pipe.

It lives in `kcloud.runtime` (not beside the worker) so that a spawned child imports only
numpy, onnxruntime and this package, never the gateway.

Protocol, one message per batch, pickled by `multiprocessing.connection`:
  parent -> child: a feeds dict (`{name: ndarray}`), or `None` to stop.
  child -> parent: first `("ready", info)` or `("failed", message)` after building the session;
                   then `("ok", outputs)` or `("error", message)` per batch.

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

from kcloud.devices.device import Device
from kcloud.runtime.session import RUNTIME_NOTE, create_session, session_provider

#: How often the child checks that its parent is still alive.
PARENT_CHECK_S = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def serve_session(
    conn: Connection, onnx_path: str | Path, device: Device, threads: int, parent_pid: int
) -> None:
    """Entry point of a worker child (target of `multiprocessing` spawn)."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="orphan-watch").start()
    try:
        session = create_session(onnx_path, device, threads=threads)
    except Exception as exc:  # report any failure to build the session to the parent, then end
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    names = [output.name for output in session.get_outputs()]
    conn.send(("ready", {
        "pid": os.getpid(),
        "provider": session_provider(session),
        "note": device.attributes.get(RUNTIME_NOTE),
    }))
    while True:
        try:
            feeds = conn.recv()
        except (EOFError, OSError):
            break  # parent gone
        if feeds is None:
            break
        try:
            reply = ("ok", dict(zip(names, session.run(names, feeds), strict=True)))
        except Exception as exc:  # an ORT failure fails this batch, not the worker
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    conn.close()
