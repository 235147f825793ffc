"""Workers against real onnxruntime: in a thread, and in a real spawned child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import build_double, build_slow, cpu_device, device_of

from kcloud.serving.errors import InferenceFailedError, ReplicaDiedError
from kcloud.serving.worker import ProcessWorker, ThreadWorker, Worker, WorkerStartError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("worker-models")
    return {"double": build_double(base / "double.onnx"), "slow": build_slow(base / "slow.onnx")}


@asynccontextmanager
async def started(worker: Worker) -> AsyncIterator[Worker]:
    """The worker, started, and closed whatever the test does."""
    await worker.start()
    try:
        yield worker
    finally:
        await worker.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("kind", [ThreadWorker, ProcessWorker])
async def test_worker_runs_batches(models, kind):
    worker = kind(models["double"], cpu_device(), threads=1)
    async with started(worker):
        assert worker.alive and worker.provider == "CPUExecutionProvider"
        if kind is ProcessWorker:
            assert worker.pid is not None and worker.pid != os.getpid()
        else:
            assert worker.pid is None
        for rows in (1, 7):
            x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
            computed = await worker.run({"x": x}, [(rows, None)])
            np.testing.assert_array_equal(computed.outputs["y"], 2 * x)
            assert 0 < computed.seconds < 5
    assert not worker.alive


@pytest.mark.parametrize("kind", [ThreadWorker, ProcessWorker])
async def test_runtime_error_fails_the_batch_not_the_worker(models, kind):
    worker = kind(models["double"], cpu_device(), threads=1)
    async with started(worker):
        with pytest.raises(InferenceFailedError, match="runtime failed"):
            await worker.run({"x": np.zeros((2, 5), dtype=np.float32)}, [(2, None)])  # wrong width
        out = (await worker.run({"x": np.ones((1, 4), dtype=np.float32)}, [(1, None)])).outputs
        assert worker.alive and out["y"][0, 0] == 2.0


@pytest.mark.parametrize("kind", [ThreadWorker, ProcessWorker])
async def test_batches_sent_before_the_last_returned_are_answered_in_order(models, kind):
    """Replicas keep a second batch on the worker: many calls at once each get their own rows."""
    worker = kind(models["double"], cpu_device(), threads=1)
    async with started(worker):
        batches = [np.full((1 + i % 3, 4), i, np.float32) for i in range(20)]
        done = await asyncio.gather(*(worker.run({"x": x}, [(len(x), None)]) for x in batches))
        for x, computed in zip(batches, done, strict=True):
            np.testing.assert_array_equal(computed.outputs["y"], 2 * x)


@pytest.mark.parametrize("kind", [ThreadWorker, ProcessWorker])
async def test_requests_past_their_deadline_when_the_batch_starts_are_cut_out(models, kind):
    """A batch waiting on the worker can outlive some deadlines: those rows are not computed."""
    worker = kind(models["double"], cpu_device(), threads=1)
    async with started(worker):
        x = np.arange(4 * 4, dtype=np.float32).reshape(4, 4)
        past, future = time.monotonic() - 1, time.monotonic() + 60
        computed = await worker.run({"x": x}, [(1, future), (2, past), (1, None)])
        assert computed.live == [True, False, True]
        np.testing.assert_array_equal(computed.outputs["y"], 2 * x[[0, 3]])
        nothing = await worker.run({"x": x[:2]}, [(1, past), (1, past)])
        assert nothing.live == [False, False] and nothing.outputs is None and nothing.seconds == 0
        everyone = await worker.run({"x": x[:1]}, [(1, future)])
        assert everyone.live is None and everyone.outputs["y"].shape == (1, 4)


async def test_every_batch_on_a_killed_child_is_replica_died(models):
    worker = ProcessWorker(models["slow"], cpu_device(), threads=1)
    async with started(worker):
        x = np.ones((4096, 512), dtype=np.float32)
        runs = [asyncio.ensure_future(worker.run({"x": x}, [(4096, None)])) for _ in range(2)]
        await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        for run in runs:
            with pytest.raises(ReplicaDiedError, match="died"):
                await asyncio.wait_for(run, timeout=30)


@pytest.mark.parametrize("kind", [ThreadWorker, ProcessWorker])
async def test_bad_model_file_is_a_clear_start_error(tmp_path, kind):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    worker = kind(broken, cpu_device(), threads=1)
    with pytest.raises(WorkerStartError, match=r"broken\.onnx|INVALID_PROTOBUF|Protobuf"):
        await worker.start()
    assert not worker.alive


async def test_unsupported_device_fails_in_the_child_with_its_message(models):
    worker = ProcessWorker(models["double"], device_of("rebellions-atom-ca22", "rbln0"), threads=1)
    with pytest.raises(WorkerStartError, match="has no runtime that serves onnxruntime models"):
        await worker.start()


async def test_child_killed_mid_batch_is_replica_died(models):
    worker = ProcessWorker(models["slow"], cpu_device(), threads=1)
    deaths = []
    worker.on_death = lambda: deaths.append(True)
    async with started(worker):
        x = np.ones((4096, 512), dtype=np.float32)  # long enough to be killed while computing
        run = asyncio.ensure_future(worker.run({"x": x}, [(4096, None)]))
        await asyncio.sleep(0.05)
        assert not run.done()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(ReplicaDiedError, match="died"):
            await asyncio.wait_for(run, timeout=30)
        assert not worker.alive and deaths == [True]
        with pytest.raises(ReplicaDiedError):
            await worker.run({"x": x[:1]}, [(1, None)])


async def test_child_death_while_idle_is_noticed(models):
    worker = ProcessWorker(models["double"], cpu_device(), threads=1)
    died = asyncio.Event()
    worker.on_death = died.set
    async with started(worker):
        os.kill(worker.pid, signal.SIGKILL)
        await asyncio.wait_for(died.wait(), timeout=10)
        assert not worker.alive


PARENT = """
import asyncio, sys
from kcloud.serving.worker import ProcessWorker
sys.path.insert(0, sys.argv[2])
from synthetic_models import cpu_device

async def main():
    worker = ProcessWorker(sys.argv[1], cpu_device(), threads=1)
    await worker.start()
    print(worker.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_child_exits_when_the_server_dies(models):
    runtime_tests = str(Path(__file__).resolve().parents[1] / "runtimes")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(models["double"]), runtime_tests],
                              stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert _pid_alive(child_pid)
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _pid_alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(child_pid), "worker child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
