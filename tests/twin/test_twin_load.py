"""Arrival processes: their rates, their shapes, recorded traces and the loads they refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from kcloud.twin.load import Load, LoadError, TraceError, arrivals, read_trace


def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_poisson_arrivals_come_at_the_rate_with_exponential_gaps() -> None:
    times, rows = arrivals(Load(kind="poisson", rate=500, rows=3), 200.0, rng())
    assert len(times) == pytest.approx(100_000, rel=0.02)
    assert (np.diff(times) >= 0).all() and times[-1] < 200.0 and (rows == 3).all()
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.02)  # exponential: CV 1


def test_a_bursty_load_is_faster_inside_its_bursts() -> None:
    load = Load(kind="bursty", rate=100, burst_rate=1000, burst_s=1, period_s=10)
    times, _ = arrivals(load, 100.0, rng())
    in_burst = np.mod(times, 10) < 1
    assert in_burst.sum() / 10 == pytest.approx(1000 * 1, rel=0.1)  # per burst
    assert (~in_burst).sum() / 10 == pytest.approx(100 * 9, rel=0.1)
    assert load.mean_rate(100.0) == pytest.approx(190)


def test_a_diurnal_load_peaks_half_a_period_in() -> None:
    load = Load(kind="diurnal", rate=100, peak_rate=1000, period_s=100)
    times, _ = arrivals(load, 100.0, rng())
    counts = np.histogram(times, bins=10, range=(0, 100))[0]
    assert counts.argmax() in (4, 5) and counts[0] < counts[4] / 3


def test_a_recorded_trace_is_replayed_in_csv_or_json_lines(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text("t_s,rows\n0.5,2\n0.1,1\n3.0,4\n")
    times, rows = arrivals(Load(kind="trace", trace=csv), 2.0, rng())
    assert times.tolist() == [0.1, 0.5] and rows.tolist() == [1, 2]  # sorted, cut at the duration
    jsonl = tmp_path / "trace.jsonl"
    jsonl.write_text('{"t_s": 0.2}\n\n{"t_s": 0.1, "rows": 5}\n')
    times, rows = read_trace(jsonl)
    assert times.tolist() == [0.1, 0.2] and rows.tolist() == [5, 1]


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("t.csv", "time,rows\n1,1\n", "header with t_s"),
        ("t.csv", "t_s,rows\n0.1,1\nsoon,1\n", "line 3"),
        ("t.csv", "t_s,rows\n-1,1\n", "finite time >= 0"),
        ("t.csv", "t_s,rows\n1,0\n", "rows must be >= 1"),
        ("t.jsonl", '{"t_s": 1}\nnot json\n', "line 2"),
        ("t.jsonl", '{"rows": 1}\n', "t_s is missing"),
        ("t.csv", "t_s,rows\n", "no request"),
    ],
)
def test_a_bad_trace_is_refused_naming_the_file_and_line(
    tmp_path: Path, name: str, text: str, error: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError, match=error) as exc:
        read_trace(path)
    assert str(path) in str(exc.value)


def test_a_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read the trace"):
        read_trace(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"kind": "poisson"}, "needs rate"),
        ({"kind": "poisson", "rate": 0}, "greater than 0"),
        ({"kind": "poisson", "rate": -5}, "greater than 0"),
        (
            {"kind": "bursty", "rate": 1, "burst_rate": 5, "burst_s": 10, "period_s": 5},
            "shorter than period_s",
        ),
        ({"kind": "diurnal", "rate": 10, "peak_rate": 5}, "at least rate"),
        ({"kind": "trace"}, "needs trace"),
        ({"kind": "sine", "rate": 1}, "kind"),
        ({"kind": "poisson", "rate": 1, "rows": 0}, "greater than or equal to 1"),
    ],
)
def test_a_load_of_zero_or_an_incomplete_one_is_refused(fields: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Load.model_validate(fields)


def test_a_duration_of_zero_is_refused() -> None:
    with pytest.raises(LoadError, match="duration"):
        arrivals(Load(kind="poisson", rate=1), 0.0, rng())


def test_a_load_too_big_to_simulate_is_refused_before_any_memory_is_taken() -> None:
    with pytest.raises(LoadError, match="shorten the duration or lower the rate"):
        arrivals(Load(kind="poisson", rate=1e9), 3600.0, rng())


def test_an_offline_load_sends_every_sample_at_the_start() -> None:
    times, rows = arrivals(Load(kind="offline", samples=500, rows=2), 10.0, rng())
    assert (times == 0).all() and len(times) == 500 and (rows == 2).all()
    with pytest.raises(ValidationError, match="needs samples"):
        Load(kind="offline")


def test_a_burst_slower_than_the_base_rate_is_a_lull() -> None:
    load = Load(kind="bursty", rate=1000, burst_rate=100, burst_s=5, period_s=10)
    times, _ = arrivals(load, 100.0, rng())
    in_burst = np.mod(times, 10) < 5
    assert in_burst.sum() / 10 == pytest.approx(100 * 5, rel=0.1)
    assert (~in_burst).sum() / 10 == pytest.approx(1000 * 5, rel=0.1)
