"""Full-length MLPerf LoadGen runs of MiniLM on this machine's CPU: Offline, then Server.

Both runs follow the MLPerf rules built into LoadGen (600 s minimum duration, MLPerf's seeds);
nothing here is `--quick`. LoadGen's scheduling hints come from measurements:
- Offline: the expected QPS is measured by the runner's 5 s warm-up (`kcloud.bench.calibrate`),
  unless `--offline-target-qps` is given;
- Server: the target QPS is a fraction of the Offline run's samples/s just measured, unless
  `--server-target-qps` is given. The fraction is `--server-fraction`, or else the highest of
  0.6, 0.45, 0.3, 0.2, 0.1 whose 20 s Server run met LoadGen's latency constraint
  ("Performance constraints satisfied: Yes"; too short for early stopping, which the full run
  then judges). The latency bound defaults to 130 ms,
  MLPerf's Server bound for its BERT benchmark (mlperf.conf `bert.Server.target_latency`), the
  MLPerf model closest to MiniLM (LoadGen's default for unknown models is 10 ms).

How many samples the SUT keeps in flight (`--max-in-flight`) is chosen first, unless given, by a
sweep of short (`--quick`) Offline LoadGen runs. The sweep's figures are written out with the rest.

Validity is LoadGen's own. Runs take about 11 minutes each (LoadGen issues 10 % more than the
minimum); run it when the machine is quiet:

    .venv/bin/python benchmarks/bench_full_runs.py

Writes the LoadGen run directories under benchmarks/results/bench-full/ and a summary to
benchmarks/results/bench_full_runs.json (printed too).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from kcloud.bench.result import load_result
from kcloud.bench.runner import RunRequest, execute_run, prepare_run
from kcloud.bench.settings import merge_settings, settings_from_flags

RESULTS = Path(__file__).with_name("results")
BERT_SERVER_LATENCY_MS = 130.0


SWEEP = (2, 4, 8, 16, 64)
SERVER_FRACTIONS = (0.6, 0.45, 0.3, 0.2, 0.1)
SERVER_PROBE_S = 20.0


def _run(
    console: Console,
    args: argparse.Namespace,
    scenario: str,
    flags: dict[str, Any],
    *,
    quick: bool = False,
    system: str | None = None,
) -> dict[str, Any]:
    settings = merge_settings(scenario, quick=quick, file=None, flags=settings_from_flags(flags))
    request = RunRequest(
        model=args.model,
        scenario=scenario,
        mode="performance",
        device=args.device,
        settings=settings,
        quick=quick,
        system=system or args.system,
        out=args.out,
    )
    started = time.perf_counter()
    path = execute_run(prepare_run(request), console)
    wall_s = time.perf_counter() - started
    result = load_result(path)
    return {
        "run_dir": str(path.parent),
        "wall_s": round(wall_s, 1),
        "loadgen_validity": result.loadgen.get("validity"),
        "loadgen_checks": result.loadgen.get("checks"),
        "loadgen_recommendations": result.loadgen.get("recommendations"),
        "metric": result.metric,
        "latency_ms": {k: v / 1e6 for k, v in result.latency_ns.items()},
        "throughput": result.throughput,
        "settings_used": result.settings.get("used"),
        "effective_min_duration_ms": (result.settings.get("effective") or {}).get("min_duration_ms"),
        "calibration": result.settings.get("calibration"),
        "energy": {
            k: (result.energy or {}).get(k)
            for k in ("joules", "average_power_watts", "efficiency", "modelled", "reason", "source")
        },
        "sut_stats": result.sut_stats,
        "device": (result.sut.get("device") or {}).get("uid"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default=None, help="device uid (default: this machine's CPU)")
    parser.add_argument("--system", default="kcloud-cpu-full")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench-full")
    parser.add_argument("--offline-target-qps", type=float, default=None)
    parser.add_argument("--server-target-qps", type=float, default=None)
    parser.add_argument("--server-fraction", type=float, default=None, help="default: probed (see above)")
    parser.add_argument("--max-in-flight", type=int, default=None, help="default: the best of a quick sweep")
    parser.add_argument("--latency-bound-ms", type=float, default=BERT_SERVER_LATENCY_MS)
    parser.add_argument(
        "--min-duration-s",
        type=float,
        default=None,
        help="override MLPerf's 600 s (smoke tests only: such a run is not full-length)",
    )
    args = parser.parse_args()
    console = Console(stderr=True)

    summary: dict[str, Any] = {
        "benchmark": "bench_full_runs",
        "model": args.model,
        "host": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.min_duration_s is not None:
        summary["warning"] = f"min duration overridden to {args.min_duration_s} s: NOT a full-length run"
    in_flight = args.max_in_flight
    if in_flight is None:
        sweep = {}
        for candidate in SWEEP:
            quick = _run(
                console,
                args,
                "Offline",
                {"max_in_flight": candidate},
                quick=True,
                system=f"{args.system}-sweep-{candidate}",
            )
            sweep[candidate] = (quick["metric"] or {}).get("value")
        summary["max_in_flight_sweep_quick_offline_samples_per_s"] = sweep
        in_flight = max((c for c in sweep if sweep[c]), key=lambda c: sweep[c])
    summary["max_in_flight"] = in_flight
    common = {"min_duration_s": args.min_duration_s, "max_in_flight": in_flight}
    summary["Offline"] = _run(console, args, "Offline", {"target_qps": args.offline_target_qps, **common})
    offline_sps = (summary["Offline"]["metric"] or {}).get("value")
    fraction = args.server_fraction
    if args.server_target_qps is None and fraction is None and offline_sps:
        probes = {}
        for candidate in SERVER_FRACTIONS:
            probe = _run(
                console,
                args,
                "Server",
                {
                    "target_qps": offline_sps * candidate,
                    "latency_bound_ms": args.latency_bound_ms,
                    "min_duration_s": SERVER_PROBE_S,
                    "max_in_flight": in_flight,
                },
                system=f"{args.system}-probe",
            )
            met = (probe["loadgen_checks"] or {}).get("Performance constraints satisfied")
            probes[candidate] = {"latency_constraint_met": met, "p99_ms": probe["latency_ms"].get("p99")}
            if met:
                fraction = candidate
                break
        summary["server_fraction_probes_20s"] = probes
    fraction = fraction or SERVER_FRACTIONS[-1]
    server_qps = args.server_target_qps or (offline_sps * fraction if offline_sps else None)
    summary["server_target_qps_rule"] = (
        "given" if args.server_target_qps else f"{fraction} x Offline samples/s ({offline_sps})"
    )
    summary["Server"] = _run(
        console,
        args,
        "Server",
        {"target_qps": server_qps, "latency_bound_ms": args.latency_bound_ms, **common},
    )
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=str)
    (RESULTS / "bench_full_runs.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
