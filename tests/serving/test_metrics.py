"""`ServingMetrics`: one registry per owner, and the batch side filled in by a real replica."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import add_model, build_double, cpu_device

from kcloud.models.repository import ModelRepository
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import create_replica

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_every_metric_is_on_the_registry_passed_in():
    first, second = CollectorRegistry(), CollectorRegistry()
    metrics = ServingMetrics(first)
    ServingMetrics(second)  # a second owner in the same process: no duplicate-name clash
    metrics.requests_total.labels("m", "1", "oip").inc()
    metrics.errors_total.labels("m", "429").inc()
    metrics.total_seconds.labels("m", "n/cpu0").observe(0.01)
    request_labels = {"model": "m", "version": "1", "protocol": "oip"}
    assert first.get_sample_value("kcloud_requests_total", request_labels) == 1
    assert first.get_sample_value("kcloud_request_errors_total", {"model": "m", "code": "429"}) == 1
    assert second.get_sample_value("kcloud_requests_total", request_labels) is None
    text = generate_latest(first).decode()
    for name in ("kcloud_queue_seconds", "kcloud_compute_seconds", "kcloud_request_seconds",
                 "kcloud_batch_rows", "kcloud_queue_depth", "kcloud_modelled_device_seconds"):
        assert f"# TYPE {name} " in text
    assert "MODELLED" in text  # the modelled histogram says so in its help text


async def test_replica_records_the_batch_side(tmp_path):
    repository = ModelRepository(tmp_path / "repo")
    entry = add_model(repository, "double", build_double(tmp_path / "d.onnx"), 4, max_batch_size=8,
                      max_queue_delay_ms=5)
    metrics = ServingMetrics(CollectorRegistry())
    device = cpu_device()
    replica = create_replica(entry, device, isolation="thread", threads=1, metrics=metrics)
    depth_labels = {"model": "double", "replica": replica.id}
    await replica.start()
    try:
        await asyncio.gather(*(
            replica.infer(replica.pipeline.prepare({"x": np.ones((1, 4), np.float32)}), deadline=None)
            for _ in range(20)))
        labels = {"model": "double", "device": device.uid}
        sample = metrics.registry.get_sample_value
        assert sample("kcloud_queue_seconds_count", labels) == 20  # one per request
        assert sample("kcloud_batch_rows_sum", labels) == 20
        batches = sample("kcloud_batch_rows_count", labels)
        assert sample("kcloud_compute_seconds_count", labels) == batches >= 3  # one per batch
        assert sample("kcloud_queue_depth", depth_labels) == 0
        assert sample("kcloud_modelled_device_seconds_count", labels) is None  # a real CPU: nothing modelled
    finally:
        await replica.stop()
    assert metrics.registry.get_sample_value("kcloud_queue_depth", depth_labels) is None  # removed
