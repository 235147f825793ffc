"""The console's live figures: one sampler per gateway, read by every open page.

Why one sampler: an open page polls every few seconds. If each poll read every device's sensors
and queried the database, ten open pages would cost ten times that. Instead one task samples on a
fixed tick (`DEFAULT_TICK_S`) and keeps:

- each device's recent readings (utilisation, power, energy, memory, temperature), as the device
  page's history charts;
- the devices table, serialised once per tick: a poll is answered with bytes already made;
- each served model's request rate, error rate, latency percentiles and mean batch size over the
  last tick, from the serving path's own Prometheus metrics (`kcloud.serving.metrics`).

Figures keep their kind: a reading of an emulated device is `modelled`, a sensor that is absent is
`null` with the reason, never 0. Latency percentiles are estimated from histogram buckets (linear
within a bucket, as Prometheus' `histogram_quantile`) and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Metric

from kcloud.devices.device import Device, Telemetry
from kcloud.farm.spec import DeviceView
from kcloud.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 2.0
#: Readings kept per device and figures kept per model: ten minutes at the default tick.
HISTORY_POINTS = 300
#: What one reading holds, in this order (the history's columns).
READING_FIELDS = ("utilization", "power_watts", "energy_joules", "memory_used_bytes", "temperature_celsius")


def reading_of(telemetry: Telemetry) -> tuple[float | None, ...]:
    return tuple(getattr(telemetry, name) for name in READING_FIELDS)


@dataclass
class DeviceHistory:
    """A device's recent readings, oldest first; `modelled` and `reasons` from the newest."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    readings: deque[tuple[float | None, ...]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    modelled: bool = False
    healthy: bool = True
    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, telemetry: Telemetry) -> None:
        self.times.append(telemetry.timestamp)
        self.readings.append(reading_of(telemetry))
        self.modelled = telemetry.modelled
        self.healthy = telemetry.healthy
        self.reasons = dict(telemetry.reasons)

    def as_json(self) -> dict[str, Any]:
        columns = list(zip(*self.readings, strict=True)) if self.readings else [()] * len(READING_FIELDS)
        return {
            "t": list(self.times),
            **{name: list(column) for name, column in zip(READING_FIELDS, columns, strict=True)},
            "modelled": self.modelled,
            "reasons": self.reasons,
        }


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The `q` quantile of observations counted per bucket (`counts[i]` in `(bounds[i-1], bounds[i]]`,
    the last bound `inf`), linear within its bucket; None without observations. A quantile that falls
    in the open last bucket is its lower bound (all a histogram can say)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count > 0 and seen + count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound if not math.isinf(bound) else lower
    return lower


@dataclass
class _Totals:
    """A model's cumulative serving counters at one instant (sums over devices and labels)."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    batches: float = 0.0
    batch_rows: float = 0.0


def _read_totals(metrics: ServingMetrics) -> dict[str, _Totals]:
    """Every model's counters now, from the registry's metric objects (no text exposition)."""
    totals: dict[str, _Totals] = {}

    def of(sample_labels: dict[str, str]) -> _Totals:
        return totals.setdefault(sample_labels.get("model", ""), _Totals())

    families: list[Metric] = [
        *metrics.requests_total.collect(), *metrics.errors_total.collect(),
        *metrics.total_seconds.collect(), *metrics.batch_rows.collect(),
    ]
    for family in families:
        for s in family.samples:
            if s.name == "kcloud_requests_total":
                of(s.labels).requests += s.value
            elif s.name == "kcloud_request_errors_total":
                of(s.labels).errors += s.value
            elif s.name == "kcloud_request_seconds_bucket":
                buckets = of(s.labels).latency_buckets
                bound = float(s.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name == "kcloud_batch_rows_count":
                of(s.labels).batches += s.value
            elif s.name == "kcloud_batch_rows_sum":
                of(s.labels).batch_rows += s.value
    return totals


def _rates(before: _Totals, now: _Totals, seconds: float) -> dict[str, float | None]:
    """A model's figures over one interval: rates per second, latency percentiles in ms, batch rows."""
    bounds = sorted(now.latency_buckets)
    cumulative = [now.latency_buckets[b] - before.latency_buckets.get(b, 0.0) for b in bounds]
    per_bucket = [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]
    batches = now.batches - before.batches

    def ms(q: float) -> float | None:
        value = histogram_quantile(q, bounds, per_bucket)
        return None if value is None else round(value * 1000, 3)

    return {
        "requests_per_s": round((now.requests - before.requests) / seconds, 3),
        "errors_per_s": round((now.errors - before.errors) / seconds, 3),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "mean_batch_rows": round((now.batch_rows - before.batch_rows) / batches, 2) if batches > 0 else None,
    }


@dataclass
class ModelSeries:
    """A served model's figures per tick, oldest first (the deployment page's charts)."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    points: deque[dict[str, float | None]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def as_json(self) -> dict[str, Any]:
        keys = ("requests_per_s", "errors_per_s", "p50_ms", "p99_ms", "mean_batch_rows")
        return {"t": list(self.times), **{k: [p[k] for p in self.points] for k in keys}}


def device_state(view: DeviceView) -> str:
    """What the console calls a device's placement state: failed, draining or healthy."""
    if not view.healthy or not view.present:
        return "failed"
    return "draining" if view.drained else "healthy"


class LiveFigures:
    """Samples devices and serving metrics every `tick_s` on the running loop (`start`/`stop`).

    `devices()` lists the farm's devices (every node's, as the control plane knows them), `sample`
    reads one (the control plane's telemetry source: local plugins, or a cluster's nodes), and
    `device_views()` gives their placement state (health, drain, replicas) from the database.
    """

    def __init__(
        self,
        *,
        devices: Callable[[], Iterable[Device]],
        sample: Callable[[Device], Telemetry],
        device_views: Callable[[], list[DeviceView]],
        metrics: ServingMetrics | None,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        self._devices = devices
        self._sample = sample
        self._device_views = device_views
        self._metrics = metrics
        self.tick_s = tick_s
        self.history: dict[str, DeviceHistory] = {}
        self.series: dict[str, ModelSeries] = {}
        self.devices_json: bytes = b"[]"
        self._devices_gzip: tuple[bytes, bytes] | None = None  # (the table it compresses, gzip of it)
        self.ticks = 0
        self._totals: dict[str, _Totals] = {}
        self._totals_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticked = asyncio.Event()

    # -- one tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Sample every device, rebuild the devices table, add one point to every model's series.
        Blocking (sensors, the database): the loop runs it in a thread."""
        rows = []
        views = {v.uid: v for v in self._device_views()}
        for device in self._devices():
            telemetry = self._sample(device)
            history = self.history.setdefault(device.uid, DeviceHistory())
            history.add(telemetry)
            rows.append(self._device_row(device, telemetry, views.get(device.uid)))
        self.devices_json = orjson.dumps(rows)
        self._sample_serving()
        self.ticks += 1

    @staticmethod
    def _device_row(device: Device, telemetry: Telemetry, view: DeviceView | None) -> dict[str, Any]:
        """One row of the devices table: identity, placement state and the newest reading."""
        attributes = device.attributes
        state = device_state(view) if view is not None else "healthy" if telemetry.healthy else "failed"
        return {
            "uid": device.uid,
            "node": device.node,
            "name": device.name,
            "chip": device.spec.key,
            "vendor": device.vendor,
            "kind": device.spec.kind,
            "sector": attributes.get("sector"),
            "cloud": attributes.get("cloud"),
            "emulated": device.emulated,
            "state": state,
            "health_reason": view.health_reason if view else None,
            "drain_reason": view.drain_reason if view else None,
            "replicas": view.replicas if view else 0,
            "memory_bytes": device.memory_bytes,
            **dict(zip(READING_FIELDS, reading_of(telemetry), strict=True)),
            "modelled": telemetry.modelled,
            "reasons": telemetry.reasons,
        }

    def _sample_serving(self) -> None:
        if self._metrics is None:
            return
        now = time.time()
        totals = _read_totals(self._metrics)
        if self._totals_at is not None and now > self._totals_at:
            seconds = now - self._totals_at
            for model, current in totals.items():
                series = self.series.setdefault(model, ModelSeries())
                series.times.append(now)
                series.points.append(_rates(self._totals.get(model, _Totals()), current, seconds))
        self._totals, self._totals_at = totals, now

    # -- reads ---------------------------------------------------------------------------------
    def devices_gzip(self) -> bytes:
        """The devices table gzipped, once per tick however many pages poll it (about a tenth of its
        size: a 1,000-device table is ~600 kB)."""
        table = self.devices_json
        if self._devices_gzip is None or self._devices_gzip[0] is not table:
            self._devices_gzip = (table, gzip.compress(table, compresslevel=5))
        return self._devices_gzip[1]

    def now(self, models: Iterable[str] | None = None) -> dict[str, float | None]:
        """Requests and errors per second over the newest tick, summed over `models` (default all)."""
        wanted = self.series if models is None else {m: self.series[m] for m in models if m in self.series}
        latest = [s.points[-1] for s in wanted.values() if s.points]
        return {
            "requests_per_s": round(sum(p["requests_per_s"] or 0.0 for p in latest), 3),
            "errors_per_s": round(sum(p["errors_per_s"] or 0.0 for p in latest), 3),
            "window_s": self.tick_s,
        }

    # -- the background task -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="console-live")

    async def wait_first_tick(self, timeout_s: float = 30.0) -> None:
        """Until the first tick has filled the devices table (pages opened at once see devices)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ticked.wait(), timeout_s)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a failing sensor or database read must not end the console's figures
                log.exception("console: live sample failed")
            self._ticked.set()
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
