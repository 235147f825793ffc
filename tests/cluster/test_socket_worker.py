"""`SocketWorker` against a real `ReplicaHost` session on loopback (no Ray needed for the data
path): batches cross TCP with the pipe's framing, a wrong key is refused, a dead host fails the
batch in flight as `ReplicaDiedError` and is noticed while idle."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import build_double, cpu_device

from kcloud.cluster.host import _serve
from kcloud.serving.errors import ReplicaDiedError
from kcloud.serving.worker import SocketWorker, WorkerStartError


@pytest.fixture(scope="module")
def double(tmp_path_factory) -> Path:
    return build_double(tmp_path_factory.mktemp("socket-worker") / "double.onnx")


def host_session(weights: Path, key: bytes) -> tuple[tuple[str, int], threading.Thread]:
    """What `ReplicaHost.open` does on a node, on 127.0.0.1 in a thread of this process."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    thread = threading.Thread(target=_serve, args=(listener, key, str(weights), cpu_device(), 1, {}),
                              daemon=True)
    thread.start()
    return listener.getsockname()[:2], thread


def test_batches_cross_tcp_with_the_pipe_framing(double: Path):
    async def run() -> None:
        address, thread = host_session(double, b"k" * 32)
        worker = SocketWorker(double, cpu_device(), threads=1, address=address, authkey=b"k" * 32)
        await worker.start()
        assert worker.alive and worker.provider == "CPUExecutionProvider"
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        first, second = await asyncio.gather(worker.run({"x": x}, [(3, None)]),
                                             worker.run({"x": x + 1}, [(1, None), (2, None)]))
        np.testing.assert_array_equal(first.outputs["y"], 2 * x)
        np.testing.assert_array_equal(second.outputs["y"], 2 * (x + 1))
        await worker.close()
        thread.join(5)
        assert not worker.alive and not thread.is_alive()  # the session ended with the connection

    asyncio.run(run())


def test_a_wrong_key_is_refused_before_any_batch(double: Path):
    async def run() -> None:
        address, _ = host_session(double, b"right" * 8)
        worker = SocketWorker(double, cpu_device(), threads=1, address=address, authkey=b"wrong" * 8)
        with pytest.raises(WorkerStartError, match="cannot reach the worker"):
            await worker.start()
        assert not worker.alive

    asyncio.run(run())


def test_nobody_listening_is_a_clear_start_error(double: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there

    async def run() -> None:
        worker = SocketWorker(double, cpu_device(), threads=1, address=("127.0.0.1", port))
        with pytest.raises(WorkerStartError, match=f"127.0.0.1:{port}"):
            await worker.start()

    asyncio.run(run())


def test_the_host_going_away_is_a_death_not_a_hang(double: Path):
    async def run() -> None:
        address, _ = host_session(double, b"k" * 32)
        worker = SocketWorker(double, cpu_device(), threads=1, address=address, authkey=b"k" * 32)
        died = asyncio.Event()
        worker.on_death = died.set
        await worker.start()
        assert worker._conn is not None
        # What a node's death does to the connection: the other end is gone.
        with socket.fromfd(worker._conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as same:
            same.shutdown(socket.SHUT_RDWR)
        await asyncio.wait_for(died.wait(), 5)
        assert not worker.alive
        with pytest.raises(ReplicaDiedError):
            await worker.run({"x": np.ones((1, 4), np.float32)}, [(1, None)])
        await worker.close()

    asyncio.run(run())
