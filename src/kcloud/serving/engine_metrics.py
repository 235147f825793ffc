"""LLM engine metrics, read from each engine's own `/metrics` and re-exported under `kcloud_llm_` names.

An engine replica (vLLM, furiosa-llm) already measures what matters for generation: time to
first token, inter-token latency, tokens in and out, its queue and its KV cache. kcloud does not
measure them again; it scrapes each engine on its loopback port every couple of seconds and
re-exports the figures on the gateway's registry, renamed into one vendor-neutral namespace and
labelled with `deployment, replica, device, engine` (the runtime's name), so one dashboard works
for every engine and a series says which replica and device it came from. The engine's own
`model_name` and `engine` (index) labels are dropped: the replica labels say more, and series
that differed only in them (a data-parallel vLLM has one per engine index) are merged: counters
and histograms summed, gauges summed or, for a fraction such as KV-cache use, averaged.

Histograms keep the engine's buckets as they are (re-bucketing would invent figures). A metric an
engine does not report is left out, never exported as 0. `ENGINE_NAMES` says, per engine, which
of its metrics feeds each kcloud family; adding an engine whose names differ is one entry there.

Threads: the scraper runs on the gateway's event loop while `/metrics` renders in a worker thread
(`gateway/metrics_route.py`). Each answer is digested into finished `Sample`s once, in a worker
thread, and swapped in under a lock; `collect()` only copies references and wraps them in
families, so a Prometheus scrape of the gateway costs no parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

#: Labels every re-exported series carries, in this order.
BASE_LABELS = ("deployment", "replica", "device", "engine")

DEFAULT_INTERVAL_S = 2.0
#: An engine on loopback answers /metrics in milliseconds; one that takes longer is busy or
#: stuck, and waiting for it would only delay the next round.
DEFAULT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Family:
    """One re-exported metric family, the same for every engine."""

    name: str  #: without `_total`: a counter gets it when rendered
    kind: Kind
    doc: str
    #: Engine labels kept besides the base labels (and `le`); every other engine label is dropped.
    keep: tuple[str, ...] = ()
    #: How series that differ only in dropped labels combine ("mean" for fractions).
    merge: Literal["sum", "mean"] = "sum"
    #: Key of this family's total in `EngineMetrics.snapshot`, if the router or console reads it.
    snapshot_key: str | None = None


FAMILIES: tuple[Family, ...] = (
    Family("kcloud_llm_time_to_first_token_seconds", "histogram",
           "Time from a request's arrival at the engine to its first generated token, seconds."),
    Family("kcloud_llm_inter_token_latency_seconds", "histogram",
           "Time between consecutive generated tokens of a request, seconds."),
    Family("kcloud_llm_e2e_request_latency_seconds", "histogram",
           "Time from a request's arrival at the engine to its last token, seconds."),
    Family("kcloud_llm_queue_time_seconds", "histogram",
           "Time a request waited in the engine's queue before it was scheduled, seconds."),
    Family("kcloud_llm_prompt_tokens", "counter", "Prompt (prefill) tokens the engine processed."),
    Family("kcloud_llm_generation_tokens", "counter", "Tokens the engine generated."),
    Family("kcloud_llm_requests_finished", "counter",
           "Requests the engine finished, by why they finished (stop, length, abort, error, ...).",
           keep=("finished_reason",)),
    Family("kcloud_llm_requests_running", "gauge", "Requests in the engine's running batch.",
           snapshot_key="running"),
    Family("kcloud_llm_requests_waiting", "gauge", "Requests queued in the engine, not yet running.",
           snapshot_key="waiting"),
    Family("kcloud_llm_kv_cache_usage_ratio", "gauge",
           "Share of the engine's KV-cache blocks in use, 0 to 1.", merge="mean",
           snapshot_key="kv_cache_usage"),
    Family("kcloud_llm_prefix_cache_queries", "counter",
           "Prompt tokens looked up in the engine's prefix cache.", snapshot_key="prefix_cache_queries"),
    Family("kcloud_llm_prefix_cache_hits", "counter",
           "Prompt tokens found in the engine's prefix cache (not recomputed).",
           snapshot_key="prefix_cache_hits"),
    Family("kcloud_llm_preemptions", "counter",
           "Times the engine preempted a running request (KV cache full), to recompute it later."),
)

#: 1 while the engine's last scrape succeeded, 0 after one failed; absent before the first.
UP = Family("kcloud_llm_engine_up", "gauge",
            "1 if the engine's metrics answered at the last scrape, else 0 (its other series are dropped).")

_FAMILY = {family.name: family for family in FAMILIES}

#: Engine runtime name -> {kcloud family: the engine's metric names for it, first present wins}.
#: Names are as the Prometheus parser gives them: a counter without `_total`.
VLLM_NAMES: Mapping[str, tuple[str, ...]] = {
    "kcloud_llm_time_to_first_token_seconds": ("vllm:time_to_first_token_seconds",),
    # Older vLLM releases called inter-token latency `time_per_output_token_seconds`.
    "kcloud_llm_inter_token_latency_seconds": ("vllm:inter_token_latency_seconds",
                                               "vllm:time_per_output_token_seconds"),
    "kcloud_llm_e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds",),
    "kcloud_llm_queue_time_seconds": ("vllm:request_queue_time_seconds",),
    "kcloud_llm_prompt_tokens": ("vllm:prompt_tokens",),
    "kcloud_llm_generation_tokens": ("vllm:generation_tokens",),
    # Despite its name it counts every finished request, labelled by finished_reason.
    "kcloud_llm_requests_finished": ("vllm:request_success",),
    "kcloud_llm_requests_running": ("vllm:num_requests_running",),
    "kcloud_llm_requests_waiting": ("vllm:num_requests_waiting",),
    "kcloud_llm_kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "kcloud_llm_prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "kcloud_llm_prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "kcloud_llm_preemptions": ("vllm:num_preemptions",),
}

#: furiosa-llm's documented metrics ("Monitoring the OpenAI-Compatible Server",
#: https://developer.furiosa.ai/latest/en/furiosa_llm/furiosa-llm-serve.html; served with
#: `--enable-metrics`). No recorded answer was available, so these are mapped by name only. Its
#: `time_per_output_token_seconds` observes the gap between consecutive tokens, which is what
#: vLLM now calls inter-token latency. It reports no KV-cache, prefix-cache or preemption
#: figures, and its request counters carry no finish reason.
FURIOSA_LLM_NAMES: Mapping[str, tuple[str, ...]] = {
    "kcloud_llm_time_to_first_token_seconds": ("furiosa_llm:time_to_first_token_seconds",),
    "kcloud_llm_inter_token_latency_seconds": ("furiosa_llm:time_per_output_token_seconds",),
    "kcloud_llm_e2e_request_latency_seconds": ("furiosa_llm:e2e_request_latency_seconds",),
    "kcloud_llm_prompt_tokens": ("furiosa_llm:prompt_tokens",),
    "kcloud_llm_generation_tokens": ("furiosa_llm:generation_tokens",),
    "kcloud_llm_requests_running": ("furiosa_llm:num_requests_running",),
    "kcloud_llm_requests_waiting": ("furiosa_llm:num_requests_waiting",),
}

ENGINE_NAMES: dict[str, Mapping[str, tuple[str, ...]]] = {
    "vllm": VLLM_NAMES,
    # vllm-rbln is a vLLM platform plugin: the server, and so its metrics, are vLLM's own.
    "vllm-rbln": VLLM_NAMES,
    "furiosa-llm": FURIOSA_LLM_NAMES,
}

_SUFFIXES: dict[Kind, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


class EngineSnapshot(TypedDict, total=False):
    """The last scrape's load figures for one replica; a key the engine does not report is absent."""

    running: float
    waiting: float
    kv_cache_usage: float
    prefix_cache_queries: float
    prefix_cache_hits: float
    #: Seconds since that scrape.
    age_s: float


@dataclass(frozen=True)
class _Plan:
    """What to read from one engine kind: its source names per family, and the lines worth parsing."""

    sources: tuple[tuple[Family, tuple[str, ...]], ...]
    #: Metric and sample names of the mapped metrics; other lines are skipped before parsing
    #: (a fifth of vLLM 0.32's ~630 lines are mapped; parsing them all took three times as long).
    wanted: frozenset[str]


def _plan(names: Mapping[str, tuple[str, ...]]) -> _Plan:
    sources: list[tuple[Family, tuple[str, ...]]] = []
    wanted: set[str] = set()
    for family_name, engine_names in names.items():
        family = _FAMILY[family_name]  # KeyError here names a typo in ENGINE_NAMES
        sources.append((family, engine_names))
        for name in engine_names:
            wanted.add(name)
            wanted.update(name + suffix for suffix in _SUFFIXES[family.kind])
    return _Plan(tuple(sources), frozenset(wanted))


def _metric_name(line: str) -> str | None:
    """The metric or sample name a text-format line is about; None for a plain comment."""
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") else None
    end = len(line)
    for stop in ("{", " "):
        at = line.find(stop)
        if at != -1:
            end = min(end, at)
    return line[:end]


def _relevant(text: str, wanted: frozenset[str]) -> str:
    return "\n".join(line for line in text.splitlines() if _metric_name(line) in wanted) + "\n"


@dataclass(frozen=True)
class _Scrape:
    """One scrape of one replica, ready to render: finished samples per family, and the snapshot."""

    samples: Mapping[str, tuple[Sample, ...]]
    snapshot: EngineSnapshot
    at: float  # time.monotonic()


_Digest = tuple[dict[str, tuple[Sample, ...]], EngineSnapshot]


def _digest(text: str, plan: _Plan, base: dict[str, str]) -> _Digest:
    """Rename and relabel the mapped metrics of one engine answer; `ValueError` when it is not
    Prometheus text or has none of them."""
    parsed = {metric.name: metric for metric in text_string_to_metric_families(_relevant(text, plan.wanted))}
    out: dict[str, tuple[Sample, ...]] = {}
    snapshot: EngineSnapshot = {}
    for family, engine_names in plan.sources:
        source = next((parsed[name] for name in engine_names if name in parsed), None)
        if source is None:
            continue
        samples, total = _renamed(source, family, base)
        if samples:
            out[family.name] = samples
            if family.snapshot_key is not None:
                snapshot[family.snapshot_key] = total  # type: ignore[literal-required]
    if not out:  # a 200 from something else (a proxy's page, a different engine kind)
        raise ValueError("the answer has none of the engine's mapped metrics")
    return out, snapshot


def _kept(family: Family, suffix: str) -> tuple[str, ...]:
    return (*family.keep, "le") if suffix == "_bucket" else family.keep


def _renamed(source: Metric, family: Family, base: dict[str, str]) -> tuple[tuple[Sample, ...], float]:
    """`source`'s samples under `family`'s names and labels, merged over dropped labels; and the
    sum (for "mean": the mean) of the merged values, for the snapshot."""
    merged: dict[tuple[str, tuple[str, ...]], list[float]] = {}  # (suffix, kept values) -> [sum, n]
    for sample in source.samples:
        suffix = next((s for s in _SUFFIXES[family.kind] if sample.name == source.name + s), None)
        if suffix is None:
            continue  # `_created` and anything else this kind does not render
        key = (suffix, tuple(sample.labels.get(label, "") for label in _kept(family, suffix)))
        slot = merged.setdefault(key, [0.0, 0])
        slot[0] += sample.value
        slot[1] += 1
    samples: list[Sample] = []
    total = 0.0
    for (suffix, values), (value, count) in merged.items():
        if family.merge == "mean":
            value /= count
        labels = base | dict(zip(_kept(family, suffix), values, strict=True))
        samples.append(Sample(family.name + suffix, labels, value, None, None, None))
        total += value
    if family.merge == "mean" and merged:
        total /= len(merged)
    return tuple(samples), total


@dataclass(frozen=True)
class _Watch:
    """A watched replica (identity matters: a scrape lands only if its watch is still current)."""

    replica_id: str
    url: str
    engine: str
    plan: _Plan
    labels: dict[str, str]


class EngineMetrics(Collector):
    """Scrapes the watched engines and exposes their metrics under `kcloud_llm_` names.

    Register it on the gateway's registry (`EngineMetrics(registry)`), `watch` each engine
    replica when it serves and `forget` it when it stops, and run the scraper on the gateway's
    loop (`start()` ... `await stop()`, or `await run()` as a task of your own). A failed scrape
    drops that replica's series at once (`kcloud_llm_engine_up` says 0) and is logged once, until
    the engine answers again; figures older than one interval plus the timeout are never exposed.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._scrapes: dict[str, _Scrape] = {}
        self._failing: set[str] = set()
        self._max_age_s = DEFAULT_INTERVAL_S + timeout_s
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        if registry is not None:
            registry.register(self)

    # -- which engines --------------------------------------------------------------------------
    def watch(self, replica_id: str, *, deployment: str, device: str, url: str, engine: str) -> None:
        """Scrape `url` (the engine's full metrics URL) from the next round on; `engine` is the
        runtime's name (a key of `ENGINE_NAMES`), `device` the device uid (several: joined by
        commas). Watching a watched replica again replaces it and drops its figures."""
        try:
            names = ENGINE_NAMES[engine]
        except KeyError:
            raise ValueError(f"no metric names known for engine {engine!r}; "
                             f"known: {', '.join(sorted(ENGINE_NAMES))}") from None
        labels = dict(zip(BASE_LABELS, (deployment, replica_id, device, engine), strict=True))
        watch = _Watch(replica_id, url, engine, _plan(names), labels)
        with self._lock:
            self._watches[replica_id] = watch
            self._scrapes.pop(replica_id, None)
            self._failing.discard(replica_id)

    def forget(self, replica_id: str) -> None:
        """Stop scraping the replica; its series disappear from the next collect. Unknown: no-op."""
        with self._lock:
            self._watches.pop(replica_id, None)
            self._scrapes.pop(replica_id, None)
            self._failing.discard(replica_id)

    def watched(self) -> list[str]:
        """Ids of the watched replicas, in the order they were watched."""
        with self._lock:
            return list(self._watches)

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self, replica_id: str) -> EngineSnapshot:
        """Running and waiting requests, KV-cache use and prefix-cache counts of the replica's last
        scrape, and its age; empty when there is none fresh (not watched, not yet scraped, or
        failing). For routing and the console: no Prometheus round trip."""
        with self._lock:
            scrape = self._scrapes.get(replica_id)
        now = time.monotonic()
        if scrape is None or now - scrape.at > self._max_age_s or not scrape.snapshot:
            return {}
        return scrape.snapshot | {"age_s": now - scrape.at}

    def describe(self) -> Iterator[Metric]:
        """The families' names, so the registry refuses a second collector that exports them."""
        for family in (*FAMILIES, UP):
            yield Metric(family.name, family.doc, family.kind)

    def _fresh(self) -> list[tuple[str, _Scrape]]:
        """(replica id, its last scrape) of every watched replica whose scrape is fresh, in the
        order the replicas were watched: scrapes finish in any order, readers should not follow them."""
        with self._lock:
            scrapes = [(rid, self._scrapes[rid]) for rid in self._watches if rid in self._scrapes]
        oldest = time.monotonic() - self._max_age_s
        return [(rid, scrape) for rid, scrape in scrapes if scrape.at >= oldest]

    def scrapes(self) -> list[tuple[str, float, list[Sample]]]:
        """Every fresh scrape as (replica id, when it landed on `time.monotonic()`, its samples).
        For rates over the engines' own scrape intervals (the console's): two reads of one scrape
        are one reading, which only the time tells."""
        return [(rid, scrape.at, [s for samples in scrape.samples.values() for s in samples])
                for rid, scrape in self._fresh()]

    def collect(self) -> Iterator[Metric]:
        """The last scrape of every watched replica, as families (only those with samples)."""
        scrapes = [scrape for _, scrape in self._fresh()]
        for family in (*FAMILIES, UP):
            metric = Metric(family.name, family.doc, family.kind)
            for scrape in scrapes:
                metric.samples.extend(scrape.samples.get(family.name, ()))
            if metric.samples:
                yield metric

    # -- scraping -------------------------------------------------------------------------------
    async def scrape_once(self) -> None:
        """Scrape every watched engine now, concurrently (one shared client while `run` runs)."""
        with self._lock:
            watches = list(self._watches.values())
        if not watches:
            return
        if self._client is not None:
            await asyncio.gather(*(self._scrape(self._client, watch) for watch in watches))
            return
        async with self._new_client() as client:
            await asyncio.gather(*(self._scrape(client, watch) for watch in watches))

    async def run(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Scrape every `interval_s` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        self._max_age_s = interval_s + self.timeout_s
        async with self._new_client() as client:
            self._client = client
            try:
                while True:
                    started = loop.time()
                    await self.scrape_once()
                    await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))
            finally:
                self._client = None

    def start(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Start `run` as a task on the running loop (no-op while it runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(interval_s), name="engine-metrics")

    async def stop(self) -> None:
        """Stop the scraper (the watches stay; their figures age out)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _new_client(self) -> httpx.AsyncClient:
        # trust_env=False: engines are on loopback; a proxy from the environment must not apply.
        return httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)

    async def _scrape(self, client: httpx.AsyncClient, watch: _Watch) -> None:
        try:
            response = await client.get(watch.url)
            response.raise_for_status()
            # Off the loop: parsing a vLLM answer takes a few ms of pure Python per replica,
            # which the loop serving inference should not wait for.
            digest = await asyncio.to_thread(_digest, response.text, watch.plan, watch.labels)
        except (httpx.HTTPError, ValueError) as error:
            self._store(watch, None, f"{type(error).__name__}: {error}")
            return
        self._store(watch, digest, None)

    def _store(self, watch: _Watch, result: _Digest | None, error: str | None) -> None:
        up = Sample(UP.name, dict(watch.labels), 0.0 if result is None else 1.0, None, None, None)
        samples, snapshot = result if result is not None else ({}, EngineSnapshot())
        scrape = _Scrape(samples | {UP.name: (up,)}, snapshot, time.monotonic())
        with self._lock:
            if self._watches.get(watch.replica_id) is not watch:
                return  # forgotten or replaced while this scrape was in flight
            self._scrapes[watch.replica_id] = scrape
            newly_failing = error is not None and watch.replica_id not in self._failing
            recovered = error is None and watch.replica_id in self._failing
            if error is not None:
                self._failing.add(watch.replica_id)
            else:
                self._failing.discard(watch.replica_id)
        if newly_failing:
            log.warning("%s: engine metrics at %s unreadable (%s); its kcloud_llm_ series are dropped "
                        "until it answers", watch.replica_id, watch.url, error)
        elif error is not None:
            log.debug("%s: engine metrics at %s still unreadable (%s)", watch.replica_id, watch.url, error)
        elif recovered:
            log.info("%s: engine metrics at %s readable again", watch.replica_id, watch.url)

