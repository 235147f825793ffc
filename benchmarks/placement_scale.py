"""Placement at scale, and against the exact optimum.

1. **Scale.** A synthetic farm of 10,000 devices of mixed vendors, built from the chip catalog
   (every catalog row, so unknown figures are exercised too), in nodes of 8. Deployments of a
   mix of workloads (below), with vendor / chip / precision constraints on some, both policies
   and SLO throughputs, are placed with `PlacementEngine.place_many`: the time for 1,000 and for
   10,000 replicas is the decision (filter, score, assign, reasons as codes). Rendering the
   per-device reason text of one deployment (what the database records) is timed separately.
   Target: 10,000 replicas in < 2 s.
2. **Quality.** On small instances (devices whose chips have known perf/watt and memory), the
   engine's placement is compared with the optimum of a MILP (PuLP + its bundled CBC) over
   the same objective and constraints:

       minimise   sum_{k,d} x[k,d] * rps_per_replica[k] / perf_per_watt[k,d]     (watts)
                  + 1000 * sum_{k spread, d} z[k,d]                             (co-located replicas)
       subject to sum_d x[k,d] = replicas[k]                                    (all placed)
                  sum_k x[k,d] * memory[k] <= memory[d]                         (memory fit)
                  sum_k x[k,d] * rps_per_replica[k] / samples_per_s[k,d] <= 1   (throughput fit)
                  x[k,d] = 0 where the engine's filter rejects d for k          (constraints)
                  z[k,d] >= x[k,d] - 1, x integer >= 0

   i.e. the modelled power that serves every deployment's SLO throughput, with a deployment's
   replicas kept on distinct devices under `spread`. Gap % = (engine - optimum) / optimum.
   Target: within 5 %.

The workloads are benchmark parameters (memory and FLOPs per sample in the range of well-known
models), not measurements; all perf/watt figures are modelled from the catalog.
Writes benchmarks/results/placement_scale.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pulp

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.farm.placement import FarmView, PlacementEngine, PlacementRequest, PlacementResult
from kcloud.farm.verdicts import ELIGIBLE

RESULTS = Path(__file__).with_name("results")
GB = 10**9


@dataclass(frozen=True)
class Workload:
    name: str
    memory_bytes: int
    flops_per_sample: float
    rps: tuple[float, float]  # SLO throughput range per deployment


#: Benchmark parameters in the range of well-known models (weights + workspace; FLOPs per sample).
WORKLOADS = (
    Workload("minilm-like", 100 * 10**6, 2.9e9, (50, 2000)),
    Workload("resnet50-like", 110 * 10**6, 8.2e9, (50, 1500)),
    Workload("bert-large-like", 1_400 * 10**6, 8.7e10, (10, 200)),
    Workload("llm-7b-fp16-like", 14 * GB, 1.4e10, (5, 50)),
    Workload("llm-13b-fp16-like", 27 * GB, 2.6e10, (2, 20)),
)
#: Relative share of each catalog chip in the synthetic farm (unlisted rows: 1).
CHIP_WEIGHTS = {
    "rebellions-atom-ca22": 8,
    "rebellions-atom-ca12": 4,
    "furiosa-rngd": 6,
    "furiosa-warboy": 6,
    "sapeon-x220-enterprise": 5,
    "nvidia-l4": 5,
    "nvidia-t4": 4,
    "nvidia-h100-sxm": 2,
    "nvidia-a100": 2,
    "deepx-dx-m1": 3,
    "cpu-generic": 3,
}


def synthetic_farm(n_devices: int, seed: int, chips: list[str] | None = None) -> list[Device]:
    catalog = load_catalog()
    keys = chips or catalog.keys()
    weights = np.array([CHIP_WEIGHTS.get(k, 1) for k in keys], float)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(keys), size=n_devices, p=weights / weights.sum())
    devices = []
    for i, pick in enumerate(picks):
        spec = catalog.get(keys[pick])
        memory = spec.memory_gib.value
        devices.append(
            Device(
                id=f"dev{i % 8}",
                node=f"node{i // 8:05d}",
                plugin="emulated",
                vendor=spec.vendor,
                spec=spec,
                name=spec.card or spec.chip,
                emulated=True,
                memory_bytes=int(memory * 2**30) if memory is not None else None,
                runtimes=("onnxruntime-cpu",),
            )
        )
    return devices


def synthetic_requests(
    n_deployments: int,
    replicas_each: int,
    seed: int,
    workloads: tuple[Workload, ...] = WORKLOADS,
    constraints: bool = True,
) -> list[PlacementRequest]:
    rng = np.random.default_rng(seed)
    vendors = ["rebellions", "furiosa", "nvidia"]
    requests = []
    for k in range(n_deployments):
        w = workloads[int(rng.integers(len(workloads)))]
        roll = rng.random() if constraints else 1.0
        requests.append(
            PlacementRequest(
                deployment=f"dep{k:05d}",
                model=w.name,
                count=replicas_each,
                total=replicas_each,
                memory_bytes=w.memory_bytes,
                flops_per_sample=w.flops_per_sample,
                vendor=vendors[int(rng.integers(3))] if roll < 0.15 else None,
                precision="int8" if 0.15 <= roll < 0.25 else None,
                chip="furiosa-rngd" if 0.25 <= roll < 0.30 else None,
                policy="spread" if rng.random() < 0.5 else "binpack",
                slo_throughput_rps=float(rng.uniform(*w.rps)),
            )
        )
    return requests


def time_scale(devices: list[Device], n_replicas: int, repeats: int, seed: int) -> dict[str, object]:
    replicas_each = 10
    requests = synthetic_requests(n_replicas // replicas_each, replicas_each, seed)
    times, cpu_times, placed, pending = [], [], 0, 0
    results = []
    for _ in range(repeats):
        view = FarmView(devices)
        engine = PlacementEngine(view)
        start, cpu_start = time.perf_counter(), time.process_time()
        results = engine.place_many(requests)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        placed = sum(r.placed for r in results)
        pending = sum(1 for r in results if r.outcome != "placed")
    start = time.perf_counter()
    candidates = results[0].candidates()
    reasons_s = time.perf_counter() - start
    return {
        "replicas_requested": n_replicas,
        "deployments": len(requests),
        "replicas_placed": placed,
        "deployments_not_fully_placed": pending,
        "seconds_median": round(statistics.median(times), 4),
        "seconds_min": round(min(times), 4),
        "seconds_all": [round(t, 4) for t in times],
        "cpu_seconds_median": round(statistics.median(cpu_times), 4),
        "reason_text_for_one_deployment_s": round(reasons_s, 4),
        "candidates_per_deployment": len(candidates),
    }


def objective(result_list: list[PlacementResult], penalty: float) -> tuple[float, int]:
    watts, colocated = 0.0, 0
    for r in result_list:
        counts: dict[int, int] = {}
        for i in r.chosen:
            counts[i] = counts.get(i, 0) + 1
            ppw = r._fig(i)[0]
            watts += r.request.rps_per_replica / ppw
        if r.request.policy == "spread":
            colocated += sum(c - 1 for c in counts.values() if c > 1)
    return watts + penalty * colocated, colocated


def gap_instance(
    seed: int, n_devices: int, n_deployments: int, penalty: float, time_limit: int
) -> dict[str, object]:
    known = [
        s.key
        for s in load_catalog()
        if s.memory_gib.known and s.tdp_watts.known and (s.fp16_tflops.known or s.int8_tops.known)
    ]
    devices = synthetic_farm(n_devices, seed, chips=known)
    rng = np.random.default_rng(seed + 1000)
    workloads = WORKLOADS[:4]
    requests = []
    for k, base in enumerate(synthetic_requests(n_deployments, 1, seed + 2000, workloads)):
        requests.append(
            PlacementRequest(
                deployment=base.deployment,
                model=base.model,
                count=int(rng.integers(2, 7)),
                total=None,
                memory_bytes=base.memory_bytes,
                flops_per_sample=base.flops_per_sample,
                vendor=base.vendor,
                precision=base.precision,
                chip=None,
                policy=base.policy,
                slo_throughput_rps=float(base.slo_throughput_rps) * (1 + k % 3),
            )
        )
    # Engine.
    view = FarmView(devices)
    start = time.perf_counter()
    results = PlacementEngine(view).place_many(requests)
    engine_s = time.perf_counter() - start
    engine_obj, engine_coloc = objective(results, penalty)
    engine_placed = sum(r.placed for r in results)
    wanted = sum(r.count for r in requests)

    # MILP over the same eligibility, figures and capacities (from a fresh view).
    fresh = FarmView(devices)
    probe = PlacementEngine(fresh)
    problem = pulp.LpProblem("placement", pulp.LpMinimize)
    x: dict[tuple[int, int], pulp.LpVariable] = {}
    cost_terms, mem_terms, load_terms = (
        [],
        {d: [] for d in range(len(devices))},
        {d: [] for d in range(len(devices))},
    )
    z_terms = []
    for k, req in enumerate(requests):
        dry = probe.place(PlacementRequest(**{**req.__dict__, "count": 0}), commit=False)
        row = []
        for d in range(len(devices)):
            if dry.verdict[d] != ELIGIBLE:
                continue
            ppw, sps, _, _ = dry._fig(d)
            var = pulp.LpVariable(f"x_{k}_{d}", lowBound=0, upBound=req.count, cat="Integer")
            x[(k, d)] = var
            row.append(var)
            cost_terms.append(var * (req.rps_per_replica / ppw))
            mem_terms[d].append(var * (req.memory_bytes / GB))  # GB: keeps CBC well scaled
            load_terms[d].append(var * (req.rps_per_replica / sps))
            if req.policy == "spread":
                z = pulp.LpVariable(f"z_{k}_{d}", lowBound=0)
                problem += z >= var - 1
                z_terms.append(z)
        problem += pulp.lpSum(row) == req.count
    problem += pulp.lpSum(cost_terms) + penalty * pulp.lpSum(z_terms)
    for d, device in enumerate(devices):
        if mem_terms[d]:
            problem += pulp.lpSum(mem_terms[d]) <= device.memory_bytes / GB
            problem += pulp.lpSum(load_terms[d]) <= 1
    start = time.perf_counter()
    status = problem.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit))
    milp_s = time.perf_counter() - start
    optimal = pulp.LpStatus[status] == "Optimal"
    milp_obj = pulp.value(problem.objective) if optimal else None
    gap = None
    if milp_obj and engine_placed == wanted:
        gap = round(100.0 * (engine_obj - milp_obj) / milp_obj, 3)
    return {
        "seed": seed,
        "devices": n_devices,
        "deployments": n_deployments,
        "replicas": wanted,
        "engine_placed": engine_placed,
        "engine_watts_plus_penalty": round(engine_obj, 4),
        "engine_colocated_spread_replicas": engine_coloc,
        "engine_seconds": round(engine_s, 5),
        "milp_status": pulp.LpStatus[status],
        "milp_objective": None if milp_obj is None else round(milp_obj, 4),
        "milp_seconds": round(milp_s, 3),
        "gap_percent": gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "placement_scale.json")
    args = parser.parse_args()

    devices = synthetic_farm(args.devices, args.seed)
    by_chip: dict[str, int] = {}
    for d in devices:
        by_chip[d.spec.key] = by_chip.get(d.spec.key, 0) + 1
    scale = [time_scale(devices, n, args.repeats, args.seed) for n in (1_000, 10_000)]

    penalty = 1e3
    instances = []
    for i in range(args.instances):
        n_dev = (24, 32, 40)[i % 3]
        instances.append(gap_instance(args.seed + i, n_dev, 6 + i % 4, penalty, time_limit=120))
    gaps = [g["gap_percent"] for g in instances if g["gap_percent"] is not None]
    report = {
        "benchmark": "placement_scale",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor(),
        },
        "farm": {
            "devices": len(devices),
            "nodes": len({d.node for d in devices}),
            "by_chip": by_chip,
            "note": "synthetic: every catalog row; memory from the catalog (unknown stays unknown)",
        },
        "scale": scale,
        "target_10000_replicas_s": 2.0,
        "meets_scale_target": scale[-1]["seconds_median"] < 2.0,
        "quality": {
            "objective": (
                "modelled watts serving each deployment's SLO rps + 1000 per co-located spread replica"
            ),
            "solver": f"PuLP {pulp.__version__} CBC",
            "instances": instances,
            "gap_percent_max": max(gaps) if gaps else None,
            "gap_percent_mean": round(statistics.mean(gaps), 3) if gaps else None,
            "instances_compared": len(gaps),
            "target_gap_percent": 5.0,
            "meets_gap_target": bool(gaps) and max(gaps) <= 5.0 and len(gaps) == len(instances),
        },
        "figures_are": "perf/watt modelled from the catalog (no bench profiles in the synthetic farm)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
