"""Bench settings: LoadGen's own MLPerf rules by default, then quick, file and flags, all validated."""

from __future__ import annotations

from pathlib import Path

import mlperf_loadgen as lg
import pytest

from kcloud.bench.errors import BenchError
from kcloud.bench.settings import (
    BenchSettings,
    derived_seeds,
    load_config_file,
    merge_settings,
    settings_from_flags,
    to_loadgen,
)


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Server", "Offline"])
def test_defaults_are_loadgens_mlperf_rules(scenario):
    ts = to_loadgen(
        "digits-cnn",
        scenario,
        "performance",
        merge_settings(scenario, quick=False, file=None, flags=BenchSettings()),
    )
    assert ts.min_duration_ms == 600_000  # mlperf.conf: *.<scenario>.min_duration = 600000
    assert ts.scenario == getattr(lg.TestScenario, scenario)
    assert ts.mode == lg.TestMode.PerformanceOnly
    reference = lg.TestSettings()
    assert ts.qsl_rng_seed != reference.qsl_rng_seed  # MLPerf's official seeds, not the struct's 0
    if scenario == "MultiStream":
        assert ts.min_query_count == 662 and ts.multi_stream_samples_per_query == 8
    if scenario == "Server":
        assert ts.server_target_latency_ns == 10_000_000  # *.Server.target_latency = 10 (ms)


def test_quick_shortens_but_flags_win():
    settings = merge_settings(
        "Server",
        quick=True,
        file=None,
        flags=settings_from_flags({"target_qps": 50.0, "min_duration_s": 2.0}),
    )
    ts = to_loadgen("m", "Server", "accuracy", settings)
    assert ts.min_duration_ms == 2000 and ts.server_target_qps == 50.0
    assert ts.min_query_count == 64 and ts.max_duration_ms == 20_000
    assert ts.mode == lg.TestMode.AccuracyOnly


def test_config_file_scenario_table_beats_shared_table(tmp_path: Path):
    path = tmp_path / "bench.toml"
    path.write_text(
        "[settings]\nmin_duration_s = 30\nseed = 7\ntarget_qps = 5\n\n[Offline]\ntarget_qps = 800\n"
    )
    file = load_config_file(path)
    offline = merge_settings("Offline", quick=False, file=file, flags=BenchSettings())
    assert (offline.min_duration_s, offline.target_qps, offline.seed) == (30, 800, 7)
    # target_qps in [settings] does not apply to SingleStream and is ignored there
    single = merge_settings("SingleStream", quick=False, file=file, flags=BenchSettings())
    assert single.target_qps is None
    ts = to_loadgen("m", "Offline", "performance", offline)
    assert (ts.qsl_rng_seed, ts.sample_index_rng_seed, ts.schedule_rng_seed) == derived_seeds(7)
    assert ts.offline_expected_qps == 800


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_target_qps_must_be_positive(value):
    with pytest.raises(BenchError, match=r"--target-qps: Input should be greater than 0"):
        settings_from_flags({"target_qps": value})


def test_flag_that_does_not_apply_to_the_scenario_is_refused():
    with pytest.raises(BenchError, match="--target-qps applies to Offline and Server, not SingleStream"):
        merge_settings("SingleStream", quick=False, file=None, flags=settings_from_flags({"target_qps": 5.0}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[settings\nmin_duration_s = 1", "not valid TOML"),
        ("[settings]\nmin_duraton_s = 1\n", r"\[settings\]\.min_duraton_s: unknown setting"),
        ("[Offline]\ntarget_qps = 0\n", r"\[Offline\]\.target_qps: Input should be greater than 0"),
        (
            "[settings]\nmin_query_count = 'many'\n",
            r"\[settings\]\.min_query_count: Input should be a valid integer",
        ),
        ("[Offlin]\ntarget_qps = 3\n", r"\[Offlin\]: unknown setting"),
        (
            "[SingleStream]\nlatency_bound_ms = 5\n",
            r"bad.toml: \[SingleStream\] latency_bound_ms applies to Server",
        ),
    ],
)
def test_bad_config_file_names_file_and_key(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BenchError, match=expected) as info:
        merge_settings("SingleStream", quick=False, file=load_config_file(path), flags=BenchSettings())
    assert str(info.value).startswith(f"config file {path}")


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(BenchError, match="not found"):
        load_config_file(tmp_path / "absent.toml")


def test_unknown_scenario_and_mode():
    with pytest.raises(BenchError, match="unknown scenario 'Batch'"):
        merge_settings("Batch", quick=False, file=None, flags=BenchSettings())
    with pytest.raises(BenchError, match="unknown mode 'fast'"):
        to_loadgen("m", "Offline", "fast", BenchSettings())
