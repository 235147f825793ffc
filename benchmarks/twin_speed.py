"""How fast the twin simulates (issue 17's "Speed"), written as JSON.

Two runs of `kcloud twin run`'s code path (placement, arrivals, the compiled event loop, the
summary), each timed on the wall clock:

1. **phase-1 farm, one hour**: the example farm (`examples/k-cloud-phase1.toml`) serving
   `all-MiniLM-L6-v2` with `--replicas` replicas under 10,000 requests/s offered (Poisson, one
   sentence per request) for one simulated hour; target ≥ 60× real time (the hour in ≤ 60 s);
2. **1,000 devices at 70 %**: a generated farm of 125 nodes × 8 FuriosaAI RNGD with one replica
   per device, offered 70 % of the replicas' modelled capacity (full batches at their service
   time); reported as simulated requests per wall-second, over `--large-requests` requests.

The MiniLM model must be in the repository (`kcloud models build`); the profiles are those of
`$KCLOUD_HOME/profiles` (modelled from the catalog for chips bench never measured). The first
call compiles the event loop (numba caches it); it is timed apart as `compile_s`.

    .venv/bin/python benchmarks/twin_speed.py   # writes benchmarks/results/twin_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from kcloud.farm.profiles import ProfileBook
from kcloud.models.repository import ModelRepository, default_repository_path
from kcloud.twin.run import run
from kcloud.twin.scenario import load_scenario, place
from kcloud.twin.sim import COMPILED, Batching, ReplicaTimes, simulate

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"


def _scenario(directory: Path, farm: Path, replicas: int, rate: float, duration_s: float) -> Path:
    path = directory / f"scenario-{replicas}.toml"
    path.write_text(f"""
[twin]
farm = "{farm}"
duration_s = {duration_s}
seed = 1
bin_s = {max(1.0, duration_s / 600)}

[[deployments]]
name = "minilm"
model = "{MODEL}"
replicas = {replicas}
load = {{ kind = "poisson", rate = {rate} }}
""")
    return path


def _timed(scenario: Path, repository: ModelRepository, profiles: ProfileBook) -> dict:
    started = time.perf_counter()
    farm = place(load_scenario(scenario), repository, profiles)
    placed = time.perf_counter()
    result = run(farm)
    wall = time.perf_counter() - started
    (deployment,) = result["deployments"]
    return {
        "devices": len(farm.devices),
        "replicas": len(deployment["replicas"]),
        "chips": sorted({r["chip"] for r in deployment["replicas"]}),
        "offered_rps": deployment["offered_rps"],
        "requests": result["simulation"]["requests"],
        "answered": deployment["answered"],
        "p99_ms": deployment["latency_ms"]["p99"],
        "simulated_s": result["duration_s"],
        "placement_s": round(placed - started, 3),
        "wall_s": round(wall, 3),
        "speed_x_real_time": round(result["duration_s"] / wall, 3),
        "requests_per_wall_s": round(result["simulation"]["requests"] / wall),
    }


def _compile_s() -> float:
    started = time.perf_counter()
    replica = ReplicaTimes(service_s=np.array([0.0, 0.001]), batch_rows=1)
    simulate(np.zeros(1), np.ones(1, np.int64), [replica], Batching(0.0, 1, 0.0))
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "twin_speed.json")
    parser.add_argument("--replicas", type=int, default=16, help="MiniLM replicas on the phase-1 farm")
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--large-requests", type=int, default=20_000_000)
    args = parser.parse_args()
    repository = ModelRepository(default_repository_path())
    profiles = ProfileBook.load()
    compile_s = _compile_s()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        phase1 = _timed(
            _scenario(
                directory,
                ROOT / "examples" / "k-cloud-phase1.toml",
                args.replicas,
                args.rate,
                args.duration_s,
            ),
            repository,
            profiles,
        )
        farm = directory / "farm-1000.toml"
        farm.write_text(
            '[farm]\nname = "rngd-1000"\n'
            + "".join(
                f'\n[[nodes]]\nname = "n{k:03d}"\ndevices = [{{ chip = "furiosa-rngd", count = 8 }}]\n'
                for k in range(125)
            )
        )
        probe = place(load_scenario(_scenario(directory, farm, 1000, 1.0, 1.0)), repository, profiles)
        capacity = sum(r.times.drain_rows_per_s for d in probe.deployments for r in d.replicas)
        rate = 0.7 * capacity
        large = _timed(
            _scenario(directory, farm, 1000, rate, args.large_requests / rate), repository, profiles
        )
        large["modelled_capacity_rps"] = round(capacity)
    report = {
        "benchmark": "twin_speed",
        "compiled": COMPILED,
        "compile_s": compile_s,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "phase1_hour": phase1 | {"target_x_real_time": 60, "met": phase1["speed_x_real_time"] >= 60},
        "farm_1000_at_70_percent": large,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
