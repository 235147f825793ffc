"""MLPerf LoadGen's scenarios on one device (`kcloud.twin.mlperf`): LoadGen's Server schedule, the
bound on a simulation's size, and the loads the twin cannot express."""

from __future__ import annotations

import numpy as np
import pytest

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.farm.profiles import DeviceProfile, modelled_profile
from kcloud.models.config import Batching
from kcloud.twin import mlperf
from kcloud.twin.load import LoadError, poisson_queries
from kcloud.twin.mlperf import ScenarioLoad, simulate_scenario

BATCHING = Batching(max_batch_size=64, max_queue_delay_ms=2.0)


def _chip() -> tuple[Device, DeviceProfile]:
    spec = load_catalog().get("furiosa-rngd")
    device = Device(id="rngd0", node="n", plugin="emulated", vendor="furiosa", spec=spec, name="RNGD",
                    emulated=True)
    return device, modelled_profile(spec, "m", 688_914_432.0, max_batch=64, weight_bytes=90_258_772)


def test_server_queries_are_exactly_the_runs_count_with_exponential_gaps() -> None:
    times = poisson_queries(500.0, 50_000, np.random.default_rng(3))
    gaps = np.diff(times)
    assert len(times) == 50_000 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.02)  # exponential: CV 1
    with pytest.raises(LoadError):
        poisson_queries(0.0, 10, np.random.default_rng(3))


def test_a_long_run_is_simulated_in_part_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlperf, "MAX_REQUESTS", 1_000)
    device, profile = _chip()
    load = ScenarioLoad("Server", 5_000, target_qps=2_000.0, latency_bound_s=0.01, percentile=0.99)
    figures = simulate_scenario(load, device, profile, BATCHING)
    assert figures["simulation"]["requests"] == 1_000 and figures["simulation"]["of_the_run"] == 5_000
    assert "1,000 of the run's 5,000 samples" in figures["simulation"]["note"]
    assert figures["samples_per_second"] == pytest.approx(2_000, rel=0.1)


def test_a_load_the_twin_cannot_express_is_null_with_the_reason() -> None:
    device, profile = _chip()
    for load, why in (
        (ScenarioLoad("Burst", 10), "no load for LoadGen scenario 'Burst'"),
        (ScenarioLoad("Server", 10), "without a target QPS"),
        (ScenarioLoad("Offline", 0), "no query"),
    ):
        figures = simulate_scenario(load, device, profile, BATCHING)
        assert why in figures["reason"] and figures["latency_ms"] is None and figures["modelled"] is True
