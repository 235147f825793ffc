"""Replicas over real onnxruntime: batching, own answers, deadlines, emulated devices."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import add_model, build_double, build_slow, cpu_device, device_of

from kcloud.devices.plugins.emulated import DeclaredDevice, EmulatedPlugin
from kcloud.models.pipeline import InputError
from kcloud.models.repository import ModelRepository
from kcloud.runtimes import UnsupportedDeviceError, cuda_available
from kcloud.serving.errors import DeadlineExceededError, ModelNotReadyError, ReplicaDiedError
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import PIPELINE_DEPTH, create_replica

pytestmark = pytest.mark.anyio

SLOW_FLOPS = 2 * 512 * 512 * 16  # build_slow's defaults: 16 × (512×512 MatMul)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("replica")
    repository = ModelRepository(base / "repo")
    add_model(repository, "double", build_double(base / "double.onnx"), 4,
              max_batch_size=16, max_queue_delay_ms=20)
    add_model(repository, "slow", build_slow(base / "slow.onnx"), 512,
              max_batch_size=1024, max_queue_delay_ms=0, flops_per_sample=SLOW_FLOPS)
    return repository


def rows_computed(metrics: ServingMetrics, model: str, device_uid: str) -> float:
    value = metrics.registry.get_sample_value("kcloud_batch_rows_sum", {"model": model, "device": device_uid})
    return value or 0.0


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_concurrent_requests_batch_and_each_gets_its_own_rows(repo, isolation):
    metrics = ServingMetrics(CollectorRegistry())
    device = cpu_device()
    replica = create_replica(repo.get("double"), device, isolation=isolation, threads=1, metrics=metrics)
    await replica.start()
    try:
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(64)]
        outcomes = await asyncio.gather(
            *(replica.infer(replica.pipeline.prepare({"x": x}), deadline=None) for x in inputs))
        for x, outcome in zip(inputs, outcomes, strict=True):
            np.testing.assert_array_equal(outcome.outputs["y"], 2 * x)  # its own row, not a neighbour's
            assert outcome.replica_id == replica.id and outcome.device_uid == device.uid
            assert outcome.queue_s >= 0 and outcome.compute_s > 0 and outcome.modelled_device_s is None
        sizes = [o.batch_rows for o in outcomes]
        assert max(sizes) > 1 and max(sizes) <= 16
        assert rows_computed(metrics, "double", device.uid) == 64
        assert replica.load == 0
        if isolation == "process":
            assert replica.pid is not None and replica.isolation == "process"
    finally:
        await replica.stop()


async def test_multi_row_requests_keep_their_rows_together(repo):
    replica = create_replica(repo.get("double"), cpu_device(), isolation="thread", threads=1)
    await replica.start()
    try:
        inputs = [np.arange(3 * 4, dtype=np.float32).reshape(3, 4) + 100 * i for i in range(12)]
        outcomes = await asyncio.gather(
            *(replica.infer(replica.pipeline.prepare({"x": x}), deadline=None) for x in inputs))
        for x, outcome in zip(inputs, outcomes, strict=True):
            np.testing.assert_array_equal(outcome.outputs["y"], 2 * x)
            assert outcome.batch_rows <= 15  # 5 whole 3-row requests fit in 16
    finally:
        await replica.stop()


async def _busy_batches(replica, count: int) -> list[asyncio.Future]:
    """`count` 1024-row batches (8.6 GFLOP each) sent to the replica's worker, one per batch."""
    prepare = replica.pipeline.prepare
    busy = []
    for _ in range(count):
        busy.append(asyncio.ensure_future(
            replica.infer(prepare({"x": np.ones((1024, 512), np.float32)}), deadline=None)))
        async with asyncio.timeout(10):
            while replica.batcher.queued or replica.load < 1024 * len(busy):
                await asyncio.sleep(0.001)
    return busy


@pytest.mark.parametrize(
    ("busy_batches", "where"),
    [(1, "on the worker, behind the batch computing"), (PIPELINE_DEPTH, "in the replica's queue")],
)
async def test_expired_requests_are_not_computed(repo, busy_batches, where):
    """Requests whose deadline passes while they wait get 504 and are never computed, whether
    they wait in the queue (answered at the deadline) or on the worker behind another batch
    (answered when the worker reaches them)."""
    metrics = ServingMetrics(CollectorRegistry())
    device = cpu_device()
    replica = create_replica(repo.get("slow"), device, isolation="thread", threads=1, metrics=metrics)
    await replica.start()
    try:
        prepare = replica.pipeline.prepare
        busy = await _busy_batches(replica, busy_batches)
        one_row = {"x": np.ones((1, 512), np.float32)}
        doomed = [replica.infer(prepare(one_row), deadline=time.monotonic() + 0.01) for _ in range(5)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, DeadlineExceededError) for r in results), (where, results)
        if busy_batches == PIPELINE_DEPTH:  # refused from the queue at the deadline, not later
            assert not busy[-1].done(), "the busy batches finished before the deadlines: proves nothing"
        await asyncio.gather(*busy)
        last = await replica.infer(prepare(one_row), deadline=time.monotonic() + 30)
        assert last.batch_rows == 1
        # none of the 5 expired rows
        assert rows_computed(metrics, "slow", device.uid) == 1024 * busy_batches + 1, where
    finally:
        await replica.stop()


async def test_emulated_device_records_modelled_time_on_its_plugin(repo):
    plugin = EmulatedPlugin([DeclaredDevice(node="gwangju-1", id="rngd0", chip="furiosa-rngd")])
    device = plugin.devices[0]
    metrics = ServingMetrics(CollectorRegistry())
    replica = create_replica(repo.get("slow"), device, isolation="thread", emulation=plugin, metrics=metrics)
    assert replica.worker.threads == 1  # default layout of an emulated device
    await replica.start()
    try:
        before = plugin.sample(device)
        prepared = replica.pipeline.prepare({"x": np.ones((8, 512), np.float32)})
        outcome = await replica.infer(prepared, deadline=None)
        # RNGD's roofline at its default efficiency 0.4 (no MLPerf result): 256 BF16 TFLOPS, and its
        # 1.5 TB/s reading the FP32 weights at BF16 width; this small model is memory bound at 8 rows.
        compute_s = SLOW_FLOPS * 8 / (256e12 * 0.4)
        memory_s = repo.get("slow").config.memory_bytes / 2 / (1.5e12 * 0.4)
        expected = max(compute_s, memory_s)
        assert memory_s > compute_s
        assert outcome.modelled_device_s == pytest.approx(expected)
        assert outcome.compute_s > 0  # the real, measured host time is kept beside it
        after = plugin.sample(device)
        assert after.modelled and after.utilization > before.utilization
        modelled_sum = metrics.registry.get_sample_value(
            "kcloud_modelled_device_seconds_sum", {"model": "slow", "device": device.uid})
        assert modelled_sum == pytest.approx(expected)
    finally:
        await replica.stop()


async def test_emulated_chip_without_figures_models_nothing(repo):
    plugin = EmulatedPlugin([DeclaredDevice(node="n", id="x220", chip="sapeon-x220-enterprise")])
    replica = create_replica(repo.get("slow"), plugin.devices[0], isolation="thread", emulation=plugin)
    await replica.start()
    try:
        prepared = replica.pipeline.prepare({"x": np.ones((2, 512), np.float32)})
        outcome = await replica.infer(prepared, deadline=None)
        assert outcome.modelled_device_s is None
        assert plugin.sample(plugin.devices[0]).utilization == 0
    finally:
        await replica.stop()


async def test_bad_input_is_refused_before_the_queue(repo):
    replica = create_replica(repo.get("double"), cpu_device(), isolation="thread", threads=1)
    with pytest.raises(InputError):
        replica.pipeline.prepare({"x": np.ones((2, 5), np.float32)})
    with pytest.raises(ModelNotReadyError):  # not started
        await replica.infer(replica.pipeline.prepare({"x": np.ones((1, 4), np.float32)}), deadline=None)


async def test_stop_finishes_queued_work_then_refuses(repo):
    replica = create_replica(repo.get("double"), cpu_device(), isolation="thread", threads=1)
    await replica.start()
    work = [asyncio.ensure_future(replica.infer(replica.pipeline.prepare({"x": np.ones((1, 4), np.float32)}),
                                                deadline=None)) for _ in range(8)]
    await asyncio.sleep(0)
    await replica.stop()
    assert all(o.outputs["y"][0, 0] == 2 for o in await asyncio.gather(*work))
    assert not replica.alive
    with pytest.raises(ReplicaDiedError):
        await replica.infer(replica.pipeline.prepare({"x": np.ones((1, 4), np.float32)}), deadline=None)


def test_unsupported_devices_are_refused_before_anything_starts(repo):
    with pytest.raises(UnsupportedDeviceError, match="has no runtime that serves onnxruntime models"):
        create_replica(repo.get("double"), device_of("rebellions-atom-ca22", "rbln0"))
    with pytest.raises(ValueError, match="isolation"):
        create_replica(repo.get("double"), cpu_device(), isolation="fiber")  # type: ignore[arg-type]


async def test_a_cpu_worker_process_starts_unconfined(repo, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # the server's own: a CPU worker inherits it untouched
    replica = create_replica(repo.get("double"), cpu_device(), isolation="process", threads=1)
    await replica.start()
    try:
        assert replica.worker.environment == {}
        assert replica.worker.plan.runtime == "onnxruntime-cpu"
    finally:
        await replica.stop()


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has CUDA: it would really open the GPU")
async def test_an_nvidia_worker_process_sees_only_its_gpu(repo, monkeypatch):
    """A real spawn: the child starts with CUDA_VISIBLE_DEVICES naming its GPU alone, and plans
    the session on CUDA ordinal 0 (the renumbered GPU); without a CUDA build it then computes on
    the host and says so. The server's own environment is left as it was."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = device_of("nvidia-h100-sxm", "nvidia3", attributes={"index": "3"})
    replica = create_replica(repo.get("double"), gpu, isolation="process", threads=1)
    await replica.start()
    try:
        assert replica.worker.environment == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        plan = replica.worker.plan
        assert (plan.runtime, plan.device_id) == ("onnxruntime-cuda", 0)
        assert replica.worker.provider == "CPUExecutionProvider"
        assert "host CPU" in gpu.attributes["runtime_note"]
        ones = replica.pipeline.prepare({"x": np.ones((1, 4), np.float32)})
        assert (await replica.infer(ones, deadline=None)).outputs["y"][0, 0] == 2
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    finally:
        await replica.stop()


def test_model_device_kinds_are_respected(tmp_path):
    repository = ModelRepository(tmp_path / "repo")
    entry = add_model(repository, "double", build_double(tmp_path / "d.onnx"), 4)
    gpu_only = entry.config.model_copy(update={"device_kinds": ["gpu"]})
    entry = dataclasses.replace(entry, config=gpu_only)
    with pytest.raises(UnsupportedDeviceError, match="may run on gpu"):
        create_replica(entry, cpu_device())


@pytest.mark.gpu
@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_replica_on_an_nvidia_gpu(repo, isolation):
    """Runs where onnxruntime offers CUDA and NVML sees a GPU (the lead runs it on a lent H100)."""
    from kcloud.devices.plugins.nvidia import NvidiaPlugin

    if not cuda_available():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    devices = NvidiaPlugin().discover("test-node")
    if not devices:
        pytest.skip("no NVIDIA GPU visible through NVML")
    replica = create_replica(repo.get("slow"), devices[0], isolation=isolation)
    await replica.start()
    try:
        assert replica.worker.provider == "CUDAExecutionProvider"
        x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
        prepared = [replica.pipeline.prepare({"x": x[i : i + 1]}) for i in range(64)]
        outcomes = await asyncio.gather(*(replica.infer(p, deadline=None) for p in prepared))
        for outcome in outcomes:
            assert outcome.outputs["y"].shape == (1, 512) and outcome.compute_s > 0
        assert max(o.batch_rows for o in outcomes) > 1
        reference = create_replica(repo.get("slow"), cpu_device(), isolation="thread", threads=1)
        await reference.start()
        try:
            expected = await reference.infer(reference.pipeline.prepare({"x": x}), deadline=None)
        finally:
            await reference.stop()
        got = np.concatenate([o.outputs["y"] for o in outcomes])
        np.testing.assert_allclose(got, expected.outputs["y"], atol=2e-2)  # each its own row (TF32 tolerance)
    finally:
        await replica.stop()


async def test_text_requests_of_different_lengths_each_get_their_own_embedding(builtin_repository):
    """The real MiniLM: requests padded together in one batch get exactly what they get alone."""
    replica = create_replica(builtin_repository.get("all-MiniLM-L6-v2"), cpu_device(), isolation="thread",
                             threads=1)
    await replica.start()
    try:
        texts = [b"kcloud", b"a farm of NPUs serves sentence embeddings", b"Gwangju",
                 b"the quick brown fox jumps over the lazy dog " * 3, b"short", "한국어".encode()]
        prepared = [replica.pipeline.prepare({"text": np.array([t], dtype=object)}) for t in texts]
        together = await asyncio.gather(*(replica.infer(p, deadline=None) for p in prepared))
        assert max(o.batch_rows for o in together) > 1
        for p, outcome in zip(prepared, together, strict=True):
            alone = await replica.infer(p, deadline=None)
            assert alone.batch_rows == 1
            np.testing.assert_allclose(outcome.outputs["embedding"], alone.outputs["embedding"], atol=1e-5)
            assert outcome.prepared.extra["tokens"] == p.extra["tokens"]
        first, second = (o.outputs["embedding"][0] for o in together[:2])
        assert float(first @ second) < 0.99  # different sentences, different answers
    finally:
        await replica.stop()
