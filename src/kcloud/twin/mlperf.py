"""One device under the load of an MLPerf LoadGen scenario, simulated: a bench run's figures on the chip.

`kcloud bench run` on an emulated device computes on the host CPU, so LoadGen's throughput and
latency are the host's. The chip's own figures under the same load come from here, all
modelled: the load LoadGen offered, through the replica's batcher as kcloud serves it
(`kcloud.twin.sim`), over the chip's modelled service times (`kcloud.farm.profiles`), with the
twin's power model (`kcloud.twin.run.power_curve`).

LoadGen's scenarios as the twin's loads (MLPerf Inference rules, "Scenarios"):

- Server: one sample per query, Poisson arrivals at the target QPS: the twin's `poisson` load;
- Offline: one query holding every sample, issued at the start: the twin's `offline` load;
- SingleStream: one sample per query, each query issued when the previous one is answered;
- MultiStream: `samples_per_query` samples per query (bench's SUT sends each as a request of one
  row), each query issued when the previous one is answered.

The twin's loads are open (arrivals do not wait for answers), and the last two are closed loops
of one query at a time. They need no closed-loop generator: each query finds the replica idle and
the service times are deterministic, so every query takes what the twin gives one query, and the
run lasts that times its queries.

The bench's replica sheds nothing (LoadGen's SUT holds the samples the replica cannot take yet, and
bench turns the queue budget off) and sets no deadline, and so does this simulation. The SUT's
in-flight limit is not modelled: it changes where a sample waits, not for how long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kcloud.devices.device import Device
from kcloud.farm.profiles import DeviceProfile
from kcloud.models.config import Batching as ModelBatching
from kcloud.twin.load import Load, arrivals, poisson_queries
from kcloud.twin.run import latency_percentiles, power_curve
from kcloud.twin.scenario import PIPELINE_DEPTH, largest_batch, service_table
from kcloud.twin.sim import COMPILED, OK, Batching, ReplicaTimes, simulate

#: LoadGen's scenarios, as the twin expresses them.
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
#: Requests one run's simulation takes at most, so a bench run stays quick: about 0.3 s compiled;
#: the interpreted loop (no numba) is ~100x slower per request.
MAX_REQUESTS = 1_000_000 if COMPILED else 20_000
#: The twin's load kind of each scenario (the closed loops have none of their own).
_KINDS = {"Server": "poisson", "Offline": "offline"}
#: What each scenario's latency percentile means to LoadGen.
_PERCENTILE_USE = {
    "Server": "LoadGen's validity: the latency bound must hold at this percentile",
    "SingleStream": "the scenario's metric (no latency bound; LoadGen's early stopping estimates it)",
    "MultiStream": "the scenario's metric, per query (no latency bound; LoadGen's early stopping "
                   "estimates it)",
}


@dataclass(frozen=True)
class ScenarioLoad:
    """The load one LoadGen run offered its device: its scenario, counts and settings as LoadGen
    applied them (the effective settings of its detail log)."""

    scenario: str
    queries: int  # queries LoadGen issued (Offline: one)
    samples_per_query: int = 1  # MultiStream's samples per query; Offline: every sample
    target_qps: float | None = None  # Server: the Poisson rate
    latency_bound_s: float | None = None  # Server: the bound at `percentile`
    percentile: float | None = None  # the scenario's latency percentile, 0-1 (None: Offline)
    seed: int = 0  # the arrivals' seed (the run's schedule seed)


def _unexpressible(load: ScenarioLoad) -> str | None:
    """Why the twin cannot simulate `load`, or None when it can."""
    if load.scenario not in SCENARIOS:
        return f"the twin has no load for LoadGen scenario {load.scenario!r}"
    if load.queries < 1 or load.samples_per_query < 1:
        return "the run issued no query to simulate"
    if load.scenario == "Server" and not (load.target_qps and load.target_qps > 0):
        return "a Server run without a target QPS: no Poisson rate to simulate"
    return None


def null_figures(load: ScenarioLoad | None, reason: str | None) -> dict[str, Any]:
    """The block's shape with every figure null, and why (`reason`)."""
    return {
        "modelled": True,
        "basis": None,
        "reason": reason,
        "load": None if load is None else _load_fields(load),
        "batching": None,
        "samples_per_second": None,
        "queries_per_second": None,
        "latency_ms": None,
        "latency_of": None,
        "loadgen_percentile": None,
        "latency_bound_ms": None if load is None or not load.latency_bound_s else load.latency_bound_s * 1e3,
        "bound_met": None,
        "utilisation": None,
        "mean_batch_rows": None,
        "energy": None,
        "simulation": None,
    }


def simulate_scenario(
    load: ScenarioLoad,
    device: Device,
    profile: DeviceProfile,
    batching: ModelBatching,
    *,
    replicas: int = 1,
) -> dict[str, Any]:
    """The twin's figures for `load` on `device` (its `profile`), through `replicas` replicas with
    the model's `batching`: throughput, latency percentiles, the latency bound, utilisation and
    energy, all modelled (JSON-ready). Figures the twin cannot give are null, with the reason."""
    why = _unexpressible(load)
    if why:
        return null_figures(load, why)
    largest = largest_batch(batching)
    table = service_table(profile, largest)
    if table is None:
        return null_figures(load, f"the chip's speed for {profile.model or 'the model'} is unknown: "
                                  f"{profile.unknown_reason or 'its profile has no service time'}")
    rows = batching.batch_rows(device.spec.kind)
    replicas = max(1, replicas)
    times = [ReplicaTimes(table, rows, device=device.uid, lanes=profile.replicas) for _ in range(replicas)]
    started = time.perf_counter()
    closed = load.scenario in ("SingleStream", "MultiStream")
    rng = np.random.default_rng(load.seed)
    wanted = load.queries * load.samples_per_query
    if closed:  # one query: every query of the closed loop takes the same
        arrival = np.zeros(load.samples_per_query)
        sizes = np.ones(len(arrival), np.int64)
        duration = 0.0
    elif load.scenario == "Server":
        arrival = poisson_queries(load.target_qps, min(wanted, MAX_REQUESTS), rng)  # type: ignore[arg-type]
        sizes = np.ones(len(arrival), np.int64)
        duration = float(arrival[-1])
    else:  # Offline
        arrival, sizes = arrivals(Load(kind="offline", samples=min(wanted, MAX_REQUESTS)), 1.0, rng)
        duration = 0.0
    if not len(arrival):
        return null_figures(load, "the simulated load brought no request")
    # nothing shed, no deadline: as the bench's replica behind LoadGen's SUT
    settings = Batching(batching.max_queue_delay_ms / 1e3, queue_limit=len(arrival) + 1, queue_budget_s=0.0,
                        pipeline_depth=PIPELINE_DEPTH)
    outcome = simulate(arrival, sizes, times, settings, horizon_s=duration)
    wall = time.perf_counter() - started
    answered = outcome.status == OK
    latency = outcome.end_s[answered] - arrival[answered]
    span = max(duration, float(np.nanmax(outcome.end_s)))
    busy = float(outcome.busy_s.sum())
    batches = int(outcome.batches.sum())
    if closed:  # the run: `queries` of these queries, one after the other
        per_query = span
        latency = np.array([per_query])
        samples, queries, seconds = wanted, load.queries, per_query * load.queries
        busy_run = busy * load.queries
    else:
        samples, queries, seconds, busy_run = int(answered.sum()), None, span, busy
        if load.scenario == "Server":
            queries = samples
    figures = null_figures(load, None)
    figures.update(
        basis=f"twin: {_load_text(load, len(arrival))}; {_batching_text(batching, rows, replicas)}; "
              f"the chip's {'modelled' if profile.modelled else 'measured'} profile",
        reason=None,
        batching={
            "replicas": replicas,
            "max_batch_size": batching.max_batch_size,
            "batch_rows": rows,
            "max_queue_delay_ms": batching.max_queue_delay_ms,
            "pipeline_depth": PIPELINE_DEPTH,
            "shed": "nothing: LoadGen's SUT holds what the replica cannot take; no queue budget, no deadline",
        },
        samples_per_second=samples / seconds if seconds > 0 else None,
        queries_per_second=load.queries / seconds if closed and seconds > 0 else None,
        latency_ms=latency_percentiles(latency),
        latency_of=(
            "each query, from its issue to its last sample's answer (every query of the closed loop alike)"
            if closed else "each sample, from its query's issue to its answer"
        ),
        utilisation=min(1.0, busy / span) if span > 0 else None,
        mean_batch_rows=float(outcome.rows.sum()) / batches if batches else None,
        energy=_energy(device, profile, seconds, busy_run, samples, queries),
        simulation={
            "requests": len(arrival),
            "of_the_run": wanted,
            "wall_s": round(wall, 3),
            "compiled": COMPILED,
            "note": None if closed or wanted <= MAX_REQUESTS else (
                f"{len(arrival):,} of the run's {wanted:,} samples, to keep the simulation short"
            ),
        },
    )
    figures.update(_percentile(load, latency))
    return figures


def _percentile(load: ScenarioLoad, latency_s: np.ndarray) -> dict[str, Any]:
    """The scenario's own latency percentile, and whether its bound (Server's only) holds there."""
    if load.percentile is None or load.scenario == "Offline":
        return {"loadgen_percentile": None, "bound_met": None}
    value_ms = float(np.percentile(latency_s, load.percentile * 100)) * 1e3
    found: dict[str, Any] = {
        "loadgen_percentile": {
            "percentile": round(load.percentile * 100, 6),
            "latency_ms": round(value_ms, 3),
            "use": _PERCENTILE_USE[load.scenario],
        },
        "bound_met": None,
    }
    if load.scenario == "Server" and load.latency_bound_s:
        found["bound_met"] = value_ms <= load.latency_bound_s * 1e3
    return found


def _energy(
    device: Device, profile: DeviceProfile, seconds: float, busy_s: float, samples: int, queries: int | None
) -> dict[str, Any]:
    """The chip's energy over the modelled run: the twin's power at its utilisation, over its time."""
    curve = power_curve(device, profile)
    if curve is None or seconds <= 0:
        why = "the catalog has no TDP for this chip" if curve is None else "no modelled time"
        return {"joules": None, "reason": why, "seconds": seconds, "samples": samples, "queries": queries}
    watts = float(curve.watts(np.array([min(1.0, busy_s / seconds)]))[0])
    return {
        "joules": watts * seconds,
        "seconds": seconds,
        "average_power_watts": watts,
        "samples": samples,
        "queries": queries,
        "power_basis": curve.basis,
        "reason": None,
    }


def _load_fields(load: ScenarioLoad) -> dict[str, Any]:
    return {
        "scenario": load.scenario,
        "kind": _KINDS.get(load.scenario, "closed loop, one query at a time"),
        "queries": load.queries,
        "samples_per_query": load.samples_per_query,
        "target_qps": load.target_qps,
        "seed": load.seed,
    }


def _load_text(load: ScenarioLoad, simulated: int) -> str:
    if load.scenario == "Server":
        return f"Poisson arrivals of {simulated:,} queries of 1 sample at {load.target_qps:g} queries/s"
    if load.scenario == "Offline":
        return f"{simulated:,} samples at once (one Offline query)"
    sample = "1 sample" if load.samples_per_query == 1 else f"{load.samples_per_query} samples"
    return f"one query of {sample} at a time, closed loop, {load.queries:,} queries"


def _batching_text(batching: ModelBatching, rows: int, replicas: int) -> str:
    who = f"{replicas} replica{'s' if replicas != 1 else ''}"
    if rows == 0:
        return f"{who}, batching off"
    return (f"{who}, a batch closes at {rows} rows (max {batching.max_batch_size}) or "
            f"{batching.max_queue_delay_ms:g} ms after its oldest sample, {PIPELINE_DEPTH} batches in "
            "flight, nothing shed")
