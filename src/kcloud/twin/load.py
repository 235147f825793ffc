"""Arrival processes for the twin: when requests come and how many rows each carries.

Every process is generated vectorised with numpy (an hour at 10,000 requests/s is 36 million
arrivals) from a seeded generator, so a run is reproducible:

- `poisson`: exponential gaps at `rate` requests/s (MLPerf's Server scenario is this process);
- `bursty`: Poisson at `rate`, and at `burst_rate` for `burst_s` seconds every `period_s`;
- `diurnal`: Poisson whose rate follows a day's sine from `rate` (trough) to `peak_rate`, over
  `period_s` (a day by default; shorten it to see a whole day in a short run), by thinning;
- `offline`: MLPerf's Offline scenario: `samples` requests all at once at the start;
- `trace`: a recorded trace: a CSV file with a header `t_s,rows[,model]` (seconds from the start,
  rows of that request; `kcloud up --record-trace FILE` writes one), or JSON lines
  `{"t_s": ..., "rows": ...}`; only times and sizes, no content. `model` keeps one model's lines.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DAY_S = 86_400.0
#: The most requests one deployment's load may bring (~60 bytes of state each in the simulation).
MAX_REQUESTS = 40_000_000


class LoadError(ValueError):
    """A load the twin cannot simulate (a duration of 0, more requests than memory allows)."""


class TraceError(LoadError):
    """A trace file was refused: the message names the file, the line and what is wrong."""


class Load(BaseModel):
    """One deployment's offered load."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["poisson", "bursty", "diurnal", "offline", "trace"] = "poisson"
    rate: Annotated[
        float | None, Field(gt=0, description="requests/s (bursty: between bursts; diurnal: trough)")
    ] = None
    rows: int = Field(default=1, ge=1, description="rows (samples) per request")
    burst_rate: float | None = Field(default=None, gt=0)
    burst_s: float | None = Field(default=None, gt=0)
    period_s: float | None = Field(default=None, gt=0)
    peak_rate: float | None = Field(default=None, gt=0)
    samples: int | None = Field(default=None, ge=1, description="offline: requests sent at the start")
    trace: Path | None = None
    model: str | None = Field(default=None, description="trace: only this model's requests")

    @model_validator(mode="after")
    def _complete(self) -> Load:
        need = {
            "poisson": ("rate",),
            "bursty": ("rate", "burst_rate", "burst_s", "period_s"),
            "diurnal": ("rate", "peak_rate"),
            "offline": ("samples",),
            "trace": ("trace",),
        }[self.kind]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} load needs {', '.join(missing)}")
        # (every field a kind needs is set from here on)
        if self.kind == "bursty" and self.burst_s >= self.period_s:  # type: ignore[operator]
            raise ValueError("burst_s must be shorter than period_s")
        if self.kind == "diurnal" and self.peak_rate < self.rate:  # type: ignore[operator]
            raise ValueError("peak_rate must be at least rate (the trough)")
        return self

    def mean_rate(self, duration_s: float) -> float | None:
        """The offered requests/s over the run, for the report (traces: None until read)."""
        if self.kind == "poisson":
            return self.rate
        if self.kind == "bursty":
            share = self.burst_s / self.period_s  # type: ignore[operator]
            return self.rate * (1 - share) + self.burst_rate * share  # type: ignore[operator]
        if self.kind == "diurnal":
            return (self.rate + self.peak_rate) / 2  # type: ignore[operator]
        if self.kind == "offline":
            return self.samples / duration_s  # type: ignore[operator]
        return None


def arrivals(load: Load, duration_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (s, ascending, within [0, duration_s)) and rows per request."""
    if duration_s <= 0:
        raise LoadError("the duration must be > 0 s")
    expected = (load.mean_rate(duration_s) or 0.0) * duration_s
    if expected > MAX_REQUESTS:
        raise LoadError(
            f"{expected:.3g} requests offered over {duration_s:g} s: more than the {MAX_REQUESTS:,} "
            "one deployment's load may bring; shorten the duration or lower the rate"
        )
    if load.kind == "trace":
        assert load.trace is not None
        times, rows = read_trace(load.trace, load.model)
        keep = times < duration_s
        return times[keep], rows[keep]
    if load.kind == "offline":
        times = np.zeros(load.samples or 0)
    elif load.kind == "poisson":
        times = _poisson(load.rate, duration_s, rng)  # type: ignore[arg-type]
    elif load.kind == "bursty":
        peak = max(load.burst_rate, load.rate)  # type: ignore[type-var]  # a "burst" may be a lull
        times = _thinned(peak, duration_s, rng, lambda t: _bursty_rate(load, t))  # type: ignore[arg-type]
    else:
        times = _thinned(load.peak_rate, duration_s, rng, lambda t: _diurnal_rate(load, t))  # type: ignore[arg-type]
    return times, np.full(len(times), load.rows, np.int64)


def _poisson(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals: the count first, then sorted uniform times (the same process, vectorised)."""
    count = rng.poisson(rate * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, count))


def poisson_queries(rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly `count` Poisson arrivals at `rate`/s: exponential gaps, summed (how MLPerf LoadGen's
    Server scenario schedules its queries), for a load that is a number of queries, not a duration."""
    if rate <= 0 or count < 0:
        raise LoadError("a Poisson load needs a rate > 0 and a count >= 0")
    return np.cumsum(rng.exponential(1.0 / rate, count))


def _thinned(peak: float, duration_s: float, rng: np.random.Generator, rate_at) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A varying-rate Poisson process by thinning one at the peak rate (Lewis and Shedler)."""
    times = _poisson(peak, duration_s, rng)
    keep = rng.uniform(0.0, peak, len(times)) < rate_at(times)
    return times[keep]


def _bursty_rate(load: Load, t: np.ndarray) -> np.ndarray:
    in_burst = np.mod(t, load.period_s) < load.burst_s  # type: ignore[operator]
    return np.where(in_burst, load.burst_rate, load.rate)


def _diurnal_rate(load: Load, t: np.ndarray) -> np.ndarray:
    period = load.period_s or DAY_S
    # trough at t = 0 (night), peak half a period later
    shape = 0.5 - 0.5 * np.cos(2 * math.pi * t / period)
    return load.rate + (load.peak_rate - load.rate) * shape  # type: ignore[operator]


def read_trace(path: Path, model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a recorded trace (CSV `t_s,rows[,model]` or JSON lines); sorted by time. With `model`,
    only the lines of that model."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from None
    records: list[tuple[float, int]] = []
    lines = text.splitlines()
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if model is None or item.get("model") == model:
                    records.append(_record(item.get("t_s"), item.get("rows", 1)))
            except (ValueError, AttributeError, TypeError) as exc:
                raise TraceError(f"{path}, line {number}: {exc}") from None
    else:
        reader = csv.DictReader(lines)
        if reader.fieldnames is None or "t_s" not in reader.fieldnames:
            raise TraceError(f"{path}: a CSV trace needs a header with t_s (and optionally rows)")
        for number, row in enumerate(reader, 2):
            if model is not None and row.get("model") != model:
                continue
            try:
                records.append(_record(row.get("t_s"), row.get("rows") or 1))
            except (ValueError, TypeError) as exc:
                raise TraceError(f"{path}, line {number}: {exc}") from None
    if not records:
        whose = f" of model {model!r}" if model is not None else ""
        raise TraceError(f"{path}: the trace holds no request{whose}")
    times = np.array([t for t, _ in records], np.float64)
    rows = np.array([r for _, r in records], np.int64)
    order = np.argsort(times, kind="stable")
    return times[order], rows[order]


def _record(t: object, rows: object) -> tuple[float, int]:
    if t is None:
        raise ValueError("t_s is missing")
    when, size = float(t), int(rows)  # type: ignore[arg-type]
    if not math.isfinite(when) or when < 0:
        raise ValueError(f"t_s must be a finite time >= 0, got {t!r}")
    if size < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    return when, size
