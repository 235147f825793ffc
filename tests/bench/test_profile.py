"""The measured profile a bench run writes: service time per power-of-two bucket of batch rows, merged
with the device's earlier profile for the batch sizes this run did not time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kcloud.bench.profile import _merged, batch_points, service_spread
from kcloud.farm.profiles import MeasuredProfileFile


def test_batch_points_are_medians_per_power_of_two_bucket():
    batches = [
        (1, 0.010),
        (1, 0.012),
        (1, 0.011),
        (3, 0.020),
        (2, 0.018),
        (3, 0.030),
        (16, 0.1),
        (0, 1.0),
        (4, -1.0),
    ]
    assert batch_points(batches) == [(1, 0.011), (3, 0.020), (16, 0.1)]  # nonsense rows and times dropped
    assert batch_points([]) == []


def test_an_earlier_profile_keeps_the_batch_sizes_this_run_did_not_time(tmp_path: Path):
    path = tmp_path / "host-cpu0_m_any.json"
    earlier = MeasuredProfileFile(
        chip_key="cpu-generic",
        device_uid="host/cpu0",
        model="m",
        latency_by_batch=[(1, 0.02), (8, 0.05), (32, 0.15)],
        source="an Offline run",
        replicas=2,
    )
    path.write_text(earlier.model_dump_json())
    assert _merged([(1, 0.01)], path, replicas=2) == [(1, 0.01), (8, 0.05), (32, 0.15)]
    assert _merged([(1, 0.01)], path, replicas=1) == [(1, 0.01)]  # another layout: replaced whole
    assert _merged([(1, 0.01)], tmp_path / "none.json", replicas=2) == [(1, 0.01)]


def test_the_spread_of_batch_times_is_measured_around_each_buckets_median():
    rng = np.random.default_rng(0)
    # lognormal times, sigma 0.3, at two batch sizes ten times apart: the sizes must not count as spread
    batches = [(1, 0.01 * float(f)) for f in rng.lognormal(0, 0.3, 400)]
    batches += [(16, 0.1 * float(f)) for f in rng.lognormal(0, 0.3, 400)]
    assert service_spread(batches) == pytest.approx(0.3, rel=0.1)
    assert service_spread([(1, 0.01)] * 400) == 0.0  # every batch the same
    assert service_spread(batches[:10]) == 0.0  # too few batches to say
