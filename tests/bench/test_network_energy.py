"""Energy for the network SUT: read from the gateway's own `/metrics`, for the devices serving the model.

The exposition is the real one a kcloud gateway serves (its device collector over an inventory
with an emulated RNGD, and its serving metrics), on a loopback HTTP server.
"""

from __future__ import annotations

import time

import pytest
from bench_helpers import EMULATED_NPU, FARM, free_port
from prometheus_client import CollectorRegistry, start_http_server

from kcloud.bench.energy import EnergyMeter
from kcloud.bench.network import NetworkBackend
from kcloud.devices.inventory import Inventory
from kcloud.devices.metrics import DeviceCollector
from kcloud.serving.metrics import ServingMetrics


@pytest.fixture
def metrics_endpoint():
    inventory = Inventory.build([FARM], include_local=False)
    registry = CollectorRegistry()
    registry.register(DeviceCollector(inventory))
    serving = ServingMetrics(registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}", inventory, serving
    server.shutdown()
    thread.join(timeout=5)


def test_energy_of_the_devices_that_served_the_model(metrics_endpoint, bench_models):
    url, inventory, serving = metrics_endpoint
    entry = bench_models.get("digits-cnn")
    serving.compute_seconds.labels(entry.name, EMULATED_NPU).observe(0.01)
    serving.compute_seconds.labels("some-other-model", "naver-private-1/rngd1").observe(0.01)
    backend = NetworkBackend(url, entry, output="label", max_in_flight=1)
    uids, reason = backend.serving_devices()
    assert (uids, reason) == ([EMULATED_NPU], None)
    meter = EnergyMeter(uids, backend.read_energy, interval_s=0.05)
    meter.start()
    started = time.time()
    inventory.emulated.record_work(EMULATED_NPU, 0.2)
    time.sleep(0.3)  # the modelled counter accrues with wall time
    meter.stop()
    (reading,) = meter.energy(started, time.time() - 0.02)
    assert reading.reason is None and reading.modelled is True and reading.joules > 0


def test_serving_device_without_a_counter_is_null_with_the_reason(metrics_endpoint, bench_models):
    url, _, serving = metrics_endpoint
    entry = bench_models.get("digits-cnn")
    serving.compute_seconds.labels(entry.name, "vm/cpu0").observe(0.01)  # not in this inventory
    uids, reason = NetworkBackend(url, entry, output="label", max_in_flight=1).serving_devices()
    assert uids == [] and "publishes no energy counter" in reason and "vm/cpu0" in reason


def test_unreadable_metrics_is_null_with_the_reason(bench_models):
    backend = NetworkBackend(
        f"http://127.0.0.1:{free_port()}", bench_models.get("digits-cnn"), output="label", max_in_flight=1
    )
    uids, reason = backend.serving_devices()
    assert uids == [] and "not readable from outside" in reason
