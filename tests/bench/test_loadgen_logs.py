"""Reading LoadGen's own logs, produced here by real LoadGen runs against a trivial echo SUT."""

from __future__ import annotations

from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest

from kcloud.bench.loadgen_logs import (
    ACCURACY_FILE,
    DETAIL_FILE,
    SUMMARY_FILE,
    latency_stats_ns,
    parse_detail,
    parse_summary,
    power_window,
    read_accuracy_log,
)


def _echo_run(outdir: Path, scenario: str, mode: lg.TestMode, min_duration_ms: int) -> None:
    """LoadGen against a SUT that answers each sample at once with its index as one float32."""
    keep: list[np.ndarray] = []

    def issue(samples: list) -> None:
        responses = []
        for sample in samples:
            data = np.array([sample.index], dtype=np.float32)
            keep.append(data)
            responses.append(lg.QuerySampleResponse(sample.id, data.ctypes.data, data.nbytes))
        lg.QuerySamplesComplete(responses)

    ts = lg.TestSettings()
    ts.FromConfig("", "echo", scenario, 0)
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = mode
    ts.min_duration_ms = min_duration_ms
    ts.min_query_count = 16
    ts.offline_expected_qps = 100
    ts.server_target_qps = 200
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.enable_trace = False
    outdir.mkdir(parents=True, exist_ok=True)
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(32, 32, lambda _: None, lambda _: None)
    lg.StartTestWithLogSettings(sut, qsl, ts, log)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)


@pytest.fixture(scope="module")
def echo_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("echo-logs")
    runs = {}
    for scenario in ("SingleStream", "MultiStream", "Server", "Offline"):
        runs[scenario] = root / scenario
        _echo_run(runs[scenario], scenario, lg.TestMode.PerformanceOnly, 100)
    runs["accuracy"] = root / "accuracy"
    _echo_run(runs["accuracy"], "Offline", lg.TestMode.AccuracyOnly, 100)
    return runs


HEADLINES = {
    "SingleStream": "90.0th percentile latency (ns)",
    "MultiStream": "99.0th percentile latency (ns)",
    "Server": "Completed samples per second",
    "Offline": "Samples per second",
}


@pytest.mark.parametrize("scenario", list(HEADLINES))
def test_summary_and_detail_agree(echo_logs, scenario):
    directory = echo_logs[scenario]
    summary = parse_summary((directory / SUMMARY_FILE).read_text())
    events = parse_detail((directory / DETAIL_FILE).read_text())
    assert summary.scenario == scenario and summary.mode == "PerformanceOnly"
    assert summary.headline_name == HEADLINES[scenario]
    assert summary.headline_value is not None and summary.headline_value > 0
    assert summary.validity in ("VALID", "INVALID")
    assert summary.validity == events["result_validity"]
    assert summary.checks["Min queries satisfied"] == events["result_min_queries_met"]
    assert summary.checks["Min duration satisfied"] == events["result_min_duration_met"]
    stats = latency_stats_ns(events)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    t0, t1 = power_window(events)
    assert 0 <= t1 - t0 < 60


def test_invalid_run_carries_loadgens_reasons(echo_logs):
    # an echo SUT finishes Offline's one query at once: far short of the minimum duration
    summary = parse_summary((echo_logs["Offline"] / SUMMARY_FILE).read_text())
    events = parse_detail((echo_logs["Offline"] / DETAIL_FILE).read_text())
    assert summary.validity == "INVALID"
    assert summary.checks["Min duration satisfied"] is False
    assert summary.recommendations and "expected QPS" in summary.recommendations[0]
    assert "expected QPS" in events["result_invalid_reason"]


def test_accuracy_log_holds_the_response_bytes(echo_logs):
    entries = read_accuracy_log(echo_logs["accuracy"] / ACCURACY_FILE)
    assert sorted(index for index, _ in entries) == list(range(32))
    for index, raw in entries:
        assert np.frombuffer(raw, dtype=np.float32).tolist() == [float(index)]
    summary = parse_summary((echo_logs["accuracy"] / SUMMARY_FILE).read_text())
    assert summary.validity is None  # LoadGen does not judge accuracy runs


def test_truncated_detail_log_is_read_up_to_the_damage():
    text = ':::MLLOG {"key": "a", "value": 1}\n:::MLLOG {"key": "b", "val'
    assert parse_detail(text) == {"a": 1}
