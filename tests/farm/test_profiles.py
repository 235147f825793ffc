"""Modelled device profiles: the emulated devices' roofline, as placement and the twin read it."""

from __future__ import annotations

import json
import logging

import pytest

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.farm.profiles import ProfileBook, modelled_profile
from kcloud.runtimes.modelled import roofline

CATALOG = load_catalog()
RNGD = CATALOG.get("furiosa-rngd")  # 256 BF16 TFLOPS, 1,500 GB/s, 180 W; no MLPerf result: 0.4
FLOPS = 1e9
#: FP32 bytes; read as BF16 (50 MB) they take 83 µs, as long as 8.5 rows of compute (9.8 µs each).
WEIGHTS = 100_000_000


def test_the_latency_curve_has_points_either_side_of_the_knee():
    profile = modelled_profile(RNGD, "m", FLOPS, weight_bytes=WEIGHTS)
    assert [b for b, _ in profile.latency_by_batch] == [1, 2, 4, 8, 9, 16, 32]
    line = roofline(RNGD, FLOPS, weight_bytes=WEIGHTS)
    assert line.knee_rows == pytest.approx(8.53, abs=0.01)
    # the twin reads every whole batch by interpolation; with the knee's neighbours it is exact,
    # and beyond the last point (compute bound) so is the per-row extrapolation
    for rows in range(1, 65):
        assert profile.latency_s(rows) == pytest.approx(line.seconds(rows))
    assert profile.latency_s(1) == pytest.approx(50e6 / (1500e9 * 0.4))  # memory bound
    assert profile.samples_per_second == pytest.approx(32 / line.seconds(32))
    assert "memory bound below 8.53 rows, compute bound above" in profile.basis
    assert "efficiency 0.4 (default 0.4" in profile.basis and "TDP 180 W" in profile.basis


def test_the_curve_goes_as_far_as_the_models_largest_batch():
    profile = modelled_profile(RNGD, "m", FLOPS, weight_bytes=WEIGHTS, max_batch=100)
    assert [b for b, _ in profile.latency_by_batch] == [1, 2, 4, 8, 9, 16, 32, 64, 100]
    heavy = modelled_profile(RNGD, "m", FLOPS, weight_bytes=WEIGHTS * 10, max_batch=32)  # knee at 85 rows
    assert [b for b, _ in heavy.latency_by_batch] == [1, 2, 4, 8, 16, 32]
    assert "memory bound at every batch up to 32" in heavy.basis
    assert heavy.samples_per_second == pytest.approx(32 / heavy.latency_s(1))  # one weight read a batch


def test_without_weights_the_profile_is_compute_only_and_says_so():
    profile = modelled_profile(RNGD, "m", FLOPS)
    assert profile.latency_s(1) == pytest.approx(FLOPS / (256e12 * 0.4))
    assert profile.latency_s(32) == pytest.approx(32 * profile.latency_s(1))
    assert "weight bytes unknown: compute term only" in profile.basis
    assert "compute bound at every batch" in profile.basis


def test_a_what_if_efficiency_applies_and_a_bad_one_is_refused():
    atom = CATALOG.get("rebellions-atom-ca22")
    own = modelled_profile(atom, "m", FLOPS)
    assert "efficiency 0.46 (MLPerf v3.0" in own.basis
    what_if = modelled_profile(atom, "m", FLOPS, efficiency=0.2)
    assert what_if.latency_s(1) == pytest.approx(FLOPS / (32e12 * 0.2))
    for bad in (0.0, 1.01, -0.5):
        with pytest.raises(ValueError, match="efficiency must be in"):
            modelled_profile(atom, "m", FLOPS, efficiency=bad)


def test_the_precision_decides_the_peak_and_the_weights_width():
    int8 = modelled_profile(RNGD, "m", FLOPS, "int8", weight_bytes=WEIGHTS)
    assert int8.latency_s(1) == pytest.approx(25e6 / (1500e9 * 0.4))  # INT8 weights: a quarter
    assert "int8_tops=512" in int8.basis and "of INT8 weights" in int8.basis
    missing = modelled_profile(RNGD, "m", FLOPS, "fp16", weight_bytes=WEIGHTS)
    assert missing.latency_by_batch == () and "furiosa-rngd has no FP16 figure" in missing.unknown_reason


def test_the_profile_book_models_with_the_models_weights_and_batch():
    device = Device(id="r0", node="n", plugin="emulated", vendor="furiosa", spec=RNGD, name=RNGD.key,
                    emulated=True)
    profile = ProfileBook().for_device(device, "m", FLOPS, weight_bytes=WEIGHTS, max_batch=64)
    assert profile.modelled and profile.latency_by_batch[-1][0] == 64
    assert profile.latency_s(1) == pytest.approx(roofline(RNGD, FLOPS, weight_bytes=WEIGHTS).seconds(1))


def test_a_measured_profile_with_a_bad_spread_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = {"chip_key": "cpu-generic", "model": "m", "latency_by_batch": [[1, 0.01]], "source": "a run"}
    (tmp_path / "good.json").write_text(json.dumps({**good, "service_sigma": 0.4}))
    (tmp_path / "bad.json").write_text(json.dumps({**good, "model": "n", "service_sigma": -0.1}))
    with caplog.at_level(logging.WARNING, logger="kcloud.farm.profiles"):
        book = ProfileBook.load(tmp_path)
    (profile,) = book.measured
    assert profile.model == "m" and profile.service_sigma == 0.4
    assert "bad.json" in caplog.text and "service_sigma" in caplog.text
