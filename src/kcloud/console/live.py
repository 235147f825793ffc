"""The console's live figures: one sampler per gateway, read by every open page.

Why one sampler: an open page polls every few seconds. If each poll read every device's sensors
and queried the database, ten open pages would cost ten times that. Instead one task samples on a
fixed tick (`DEFAULT_TICK_S`) and keeps:

- each device's recent readings (utilisation, power, energy, memory, temperature), as the device
  page's history charts;
- the devices table, serialised once per tick: a poll is answered with bytes already made;
- each served model's request rate, error rate, latency percentiles and mean batch size over the
  last tick, from the serving path's own Prometheus metrics (`kcloud.serving.metrics`);
- each chat model's engine figures (time to first token, inter-token latency, tokens per second in
  and out, requests running and waiting, KV-cache use) over each engine's last scrape interval,
  from the engines' own metrics as the gateway scrapes them (`kcloud.serving.engine_metrics`).

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
from kcloud.serving.engine_metrics import EngineMetrics
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


def window_ms(q: float, before: dict[float, float], now: dict[float, float]) -> float | None:
    """The `q` quantile in ms of what a cumulative histogram (upper bound -> count, in seconds)
    observed between two readings; None when it observed nothing."""
    bounds = sorted(now)
    cumulative = [now[b] - before.get(b, 0.0) for b in bounds]
    per_bucket = [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]
    value = histogram_quantile(q, bounds, per_bucket)
    return None if value is None else round(value * 1000, 3)


def _rates(before: _Totals, now: _Totals, seconds: float) -> dict[str, float | None]:
    """A model's figures over one interval: rates per second, latency percentiles in ms, batch rows."""
    batches = now.batches - before.batches
    return {
        "requests_per_s": round((now.requests - before.requests) / seconds, 3),
        "errors_per_s": round((now.errors - before.errors) / seconds, 3),
        "p50_ms": window_ms(0.5, before.latency_buckets, now.latency_buckets),
        "p99_ms": window_ms(0.99, before.latency_buckets, now.latency_buckets),
        "mean_batch_rows": round((now.batch_rows - before.batch_rows) / batches, 2) if batches > 0 else None,
    }


@dataclass
class _EngineTotals:
    """One engine replica's figures as one scrape of its metrics gave them."""

    deployment: str
    engine: str
    #: When the scrape landed (`time.monotonic()`).
    at: float
    ttft: dict[float, float] = field(default_factory=dict)  # upper bound (s) -> cumulative count
    inter_token: dict[float, float] = field(default_factory=dict)
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    finished: float = 0.0
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None


#: kcloud_llm_ sample name -> the `_EngineTotals` counter it adds to.
_ENGINE_COUNTERS = {
    "kcloud_llm_prompt_tokens_total": "prompt_tokens",
    "kcloud_llm_generation_tokens_total": "generation_tokens",
    "kcloud_llm_requests_finished_total": "finished",
}
_ENGINE_HISTOGRAMS = {
    "kcloud_llm_time_to_first_token_seconds_bucket": "ttft",
    "kcloud_llm_inter_token_latency_seconds_bucket": "inter_token",
}
_ENGINE_GAUGES = {
    "kcloud_llm_requests_running": "running",
    "kcloud_llm_requests_waiting": "waiting",
    "kcloud_llm_kv_cache_usage_ratio": "kv_cache_usage",
}
_ENGINE_SAMPLES = frozenset({*_ENGINE_COUNTERS, *_ENGINE_HISTOGRAMS, *_ENGINE_GAUGES})


def _read_engine_totals(engines: EngineMetrics) -> dict[str, _EngineTotals]:
    """Every engine replica's last fresh scrape, by replica id. A replica whose last scrape failed
    has only `kcloud_llm_engine_up` and is left out."""
    totals: dict[str, _EngineTotals] = {}
    for replica_id, at, samples in engines.scrapes():
        for s in samples:
            if s.name not in _ENGINE_SAMPLES:
                continue
            labels = s.labels
            replica = totals.setdefault(replica_id, _EngineTotals(labels["deployment"], labels["engine"], at))
            if (counter := _ENGINE_COUNTERS.get(s.name)) is not None:
                setattr(replica, counter, getattr(replica, counter) + s.value)
            elif (histogram := _ENGINE_HISTOGRAMS.get(s.name)) is not None:
                buckets: dict[float, float] = getattr(replica, histogram)
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            else:
                setattr(replica, _ENGINE_GAUGES[s.name], s.value)
    return totals


#: (the scrape before, the latest scrape) of one engine replica; no earlier one after its first.
ScrapePair = tuple[_EngineTotals | None, _EngineTotals]


def _engine_rates(pairs: list[ScrapePair]) -> dict[str, Any]:
    """A chat deployment's engine figures: rates over each replica's last scrape interval, summed
    over its replicas, and its replicas' gauges now. A replica's counters that went down were reset
    by a restart: its whole count is new, as Prometheus' `rate` reads a reset. Rates are null until
    some replica has been scraped twice."""
    deltas = {"prompt_tokens": 0.0, "generation_tokens": 0.0, "finished": 0.0}
    buckets: dict[str, dict[float, float]] = {
        k: {} for k in ("ttft_before", "ttft_now", "itl_before", "itl_now")}
    rated = 0

    def add(into: str, counts: dict[float, float]) -> None:
        for bound, count in counts.items():
            buckets[into][bound] = buckets[into].get(bound, 0.0) + count

    for earlier, latest in pairs:
        if earlier is None or latest.at <= earlier.at:
            continue
        if latest.generation_tokens < earlier.generation_tokens or latest.finished < earlier.finished:
            earlier = _EngineTotals(latest.deployment, latest.engine, earlier.at)  # restarted: all is new
        seconds = latest.at - earlier.at
        for name in deltas:
            deltas[name] += (getattr(latest, name) - getattr(earlier, name)) / seconds
        add("ttft_before", earlier.ttft)
        add("ttft_now", latest.ttft)
        add("itl_before", earlier.inter_token)
        add("itl_now", latest.inter_token)
        rated += 1

    def rate(name: str) -> float | None:
        return round(deltas[name], 3) if rated else None

    def gauge(name: str, mean: bool = False) -> float | None:
        values = [getattr(latest, name) for _, latest in pairs if getattr(latest, name) is not None]
        if not values:
            return None
        return round(sum(values) / len(values) if mean else sum(values), 4)

    return {
        "output_tokens_per_s": rate("generation_tokens"),
        "prompt_tokens_per_s": rate("prompt_tokens"),
        "finished_per_s": rate("finished"),
        "ttft_p50_ms": window_ms(0.5, buckets["ttft_before"], buckets["ttft_now"]),
        "ttft_p99_ms": window_ms(0.99, buckets["ttft_before"], buckets["ttft_now"]),
        "inter_token_p50_ms": window_ms(0.5, buckets["itl_before"], buckets["itl_now"]),
        "inter_token_p99_ms": window_ms(0.99, buckets["itl_before"], buckets["itl_now"]),
        "running": gauge("running"),
        "waiting": gauge("waiting"),
        "kv_cache_usage": gauge("kv_cache_usage", mean=True),
        "engines_reporting": len(pairs),
    }


@dataclass
class ModelSeries:
    """A served model's figures per tick, oldest first (the deployment page's charts)."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    points: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def add(self, at: float, point: dict[str, Any]) -> None:
        self.times.append(at)
        self.points.append(point)

    def as_json(self) -> dict[str, Any]:
        keys = list(self.points[-1]) if self.points else []
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
        engines: EngineMetrics | None = None,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        self._devices = devices
        self._sample = sample
        self._device_views = device_views
        self._metrics = metrics
        self._engines = engines
        self.tick_s = tick_s
        self.history: dict[str, DeviceHistory] = {}
        self.series: dict[str, ModelSeries] = {}
        #: Chat deployments' engine figures per tick, by deployment.
        self.engine_series: dict[str, ModelSeries] = {}
        #: The engine runtime each chat deployment's replicas run (vllm, vllm-rbln, furiosa-llm).
        self.engine_names: dict[str, str] = {}
        #: Per engine replica: its latest scrape and the one before it (rates span the two).
        self._engine_scrapes: dict[str, ScrapePair] = {}
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
        self._sample_engines()
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
                self.series.setdefault(model, ModelSeries()).add(
                    now, _rates(self._totals.get(model, _Totals()), current, seconds))
        self._totals, self._totals_at = totals, now

    def _sample_engines(self) -> None:
        if self._engines is None:
            return
        now = time.time()
        current = _read_engine_totals(self._engines)
        pairs: dict[str, ScrapePair] = {}
        for replica_id, latest in current.items():
            known = self._engine_scrapes.get(replica_id)
            if known is not None and known[1].at == latest.at:
                pairs[replica_id] = known  # no new scrape since the last tick: the same interval
            else:
                pairs[replica_id] = (known[1] if known is not None else None, latest)
        self._engine_scrapes = pairs  # replicas gone (stopped, or failing to answer) are dropped
        by_deployment: dict[str, list[ScrapePair]] = {}
        for pair in pairs.values():
            by_deployment.setdefault(pair[1].deployment, []).append(pair)
            self.engine_names[pair[1].deployment] = pair[1].engine
        for deployment, mine in by_deployment.items():
            self.engine_series.setdefault(deployment, ModelSeries()).add(now, _engine_rates(mine))

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
