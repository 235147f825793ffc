"""How close the twin comes to measured runs it never saw (issue 17's fidelity), written as JSON.

The real system: `kcloud up` in a subprocess (its own kcloud home, the models of this machine's
repository), serving on this machine's CPU, driven over HTTP by an open-loop Poisson load
(arrivals never wait for answers), one run after another. Each run records, per request, when it
was sent, its status and its latency, and reads from the server's /metrics the batches it ran
and the seconds they took (`kcloud_batch_rows`, `kcloud_compute_seconds`).

**Calibration** (per model, three runs): a probe far over capacity, a saturating run at 1.2× what
the probe served (far over, the load generator and the refusals take CPU from the server on 2
cores, so the probe understates capacity), and a light run at 15 % of what the saturating run
served. From them, and nothing else:

- the service time of a batch, a straight line through the saturating and light runs' (mean rows
  per batch, mean compute seconds per batch): `service(b) = a + c·b`, written as a measured
  profile of the CPU for the model (what `kcloud bench` would write);
- the gateway's CPU per request (`gateway_ms`, spent serially): where the twin's device alone
  would have served more than 1.1× the most either saturating run served, the gateway was the
  bottleneck, and its time per request is one over that throughput; else 0;
- a fixed delay per request (`overhead_ms`): the light run's measured p50 less the twin's p50
  for that run without it.

**Validation** (runs the calibration never saw): other loads (50 % and 80 % of capacity), an
overload (150 %), another batching setting (a copy of MiniLM whose queue delay is 10 ms instead
of 2 ms), and another replica count (two replicas of MiniLM on the one CPU). The twin replays
each run's recorded arrival times (a trace), so arrival noise is the same on both sides; it
predicts throughput (answered requests per second), p50 and p99 of the answered requests.

Every figure of both sides and each prediction's error go into the JSON. The targets (issue 17):
throughput error ≤ 5 %, p50 ≤ 5 %, p99 ≤ 10 %. Everything binds and connects to 127.0.0.1 only.
About 7 minutes on 2 cores.

    .venv/bin/python benchmarks/twin_fidelity.py   # writes benchmarks/results/twin_fidelity.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from autoscaling import Phase, offer  # noqa: E402  (sibling scripts, not a package)
from overload import Api, stop_up  # noqa: E402
from serving_throughput import (  # noqa: E402
    MINILM,
    TOKENS_PER_SENTENCE,
    admin_key,
    free_port,
    http_request,
    sentences_of_exactly,
    wait_ready,
)

from kcloud.farm.profiles import MeasuredProfileFile, ProfileBook, save_measured_profile  # noqa: E402
from kcloud.models.repository import ModelRepository, default_repository_path  # noqa: E402
from kcloud.twin.run import run as twin_run  # noqa: E402
from kcloud.twin.scenario import ScenarioFile, place  # noqa: E402

DIGITS = "digits-cnn"
MINILM_Q10 = f"{MINILM}-q10"  # the held-out batching setting: a 10 ms queue delay
TWO = "minilm-two"  # the held-out replica count: a deployment of two replicas
TARGETS = {"throughput": 0.05, "p50": 0.05, "p99": 0.10}
KCLOUD = Path(sys.executable).with_name("kcloud")


# ------------------------------------------------------------------------------ the real system
def benchmark_home(repository: ModelRepository) -> Path:
    """A kcloud home whose repository links this machine's models, plus MiniLM with a 10 ms delay."""
    home = Path(tempfile.mkdtemp(prefix="kcloud-twin-fidelity-"))
    models = home / "models"
    models.mkdir()
    for entry in repository.root.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (models / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    source = repository.root / MINILM
    variant = models / MINILM_Q10
    # copies (a model's files must lie inside its directory), the 90 MB graph as a hard link where it can
    shutil.copytree(
        source,
        variant,
        dirs_exist_ok=True,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns("config.toml"),
    )
    config = (source / "config.toml").read_text("utf-8")
    config = config.replace(f'name = "{MINILM}"', f'name = "{MINILM_Q10}"', 1)
    config = config.replace("max_queue_delay_ms = 2.0", "max_queue_delay_ms = 10.0", 1)
    assert "max_queue_delay_ms = 10.0" in config, "MiniLM's config changed: update this benchmark"
    (variant / "config.toml").write_text(config, "utf-8")
    return home


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def start_server(port: int, home: Path, log_path: Path) -> object:
    import subprocess

    command = [
        str(KCLOUD),
        "up",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--replicas",
        "1",
        "--model",
        MINILM,
        "--model",
        MINILM_Q10,
        "--model",
        DIGITS,
    ]
    log = log_path.open("w")
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "KCLOUD_HOME": str(home)},
    )


def server_counters(port: int, key: str, model: str) -> tuple[float, float, float]:
    """(batches, rows, compute seconds) the server has run for `model` so far."""
    text = httpx.get(
        f"http://127.0.0.1:{port}/metrics", timeout=10, headers={"Authorization": f"Bearer {key}"}
    ).text
    batches = rows = seconds = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("kcloud_batch_rows_count"):
            batches += value
        elif line.startswith("kcloud_batch_rows_sum"):
            rows += value
        elif line.startswith("kcloud_compute_seconds_sum"):
            seconds += value
    return batches, rows, seconds


def measure(
    port: int, key: str, name: str, model: str, requests: list[bytes], rate: float, seconds: float, seed: int
) -> dict:
    """One open-loop Poisson run at `rate` against served name `name`; what the client and server saw."""
    before = server_counters(port, key, model)
    outcomes, _ = asyncio.run(offer(port, requests, [Phase("run", rate, seconds)], seed))
    after = server_counters(port, key, model)
    batches, rows, compute = (b - a for a, b in zip(before, after, strict=True))
    ok = np.array([o.latency_s for o in outcomes if o.status == 200])
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {
        "offered_rps": rate,
        "seconds": seconds,
        "requests": len(outcomes),
        "statuses": statuses,
        "throughput_rps": len(ok) / seconds,
        "p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
        "p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
        "batches": batches,
        "mean_batch_rows": rows / batches if batches else None,
        "mean_compute_ms": compute / batches * 1000 if batches else None,
        "arrivals_s": sorted(o.sent_at for o in outcomes),
    }


# ------------------------------------------------------------------------------ the twin
def fit_service(saturated: dict, light: dict) -> tuple[float, float]:
    """(a, c) of service(b) = a + c·b through the two runs' mean batch and mean compute time."""
    b1, t1 = light["mean_batch_rows"], light["mean_compute_ms"] / 1000
    b2, t2 = saturated["mean_batch_rows"], saturated["mean_compute_ms"] / 1000
    if b2 - b1 < 0.5:  # no spread in batch size: all per row
        return 0.0, t2 / b2
    c = max(0.0, (t2 - t1) / (b2 - b1))
    return max(0.0, t1 - c * b1), c


def write_profile(directory: Path, model: str, max_batch: int, a: float, c: float, source: str) -> None:
    points = [(b, a + c * b) for b in sorted({1, max_batch})]
    save_measured_profile(
        MeasuredProfileFile(
            chip_key="cpu-generic",
            device_uid="host/cpu0",
            model=model,
            latency_by_batch=points,
            source=source,
        ),
        directory,
    )


def predict(
    repository: ModelRepository,
    profiles: Path,
    model: str,
    replicas: int,
    measured: dict,
    overhead_ms: float,
    gateway_ms: float,
    workdir: Path,
) -> dict:
    """The twin's figures for a measured run: the same model, replicas and recorded arrivals."""
    trace = workdir / f"trace-{random.getrandbits(32):08x}.csv"
    trace.write_text("t_s,rows\n" + "".join(f"{t:.6f},1\n" for t in measured["arrivals_s"]))
    scenario = ScenarioFile.model_validate(
        {
            "twin": {
                "include_local": True,
                "duration_s": measured["seconds"],
                "overhead_ms": overhead_ms,
                "gateway_ms": gateway_ms,
            },
            "deployments": [
                {
                    "name": model,
                    "model": model,
                    "replicas": replicas,
                    "node": "host",
                    "load": {"kind": "trace", "trace": str(trace)},
                }
            ],
        }
    )
    result = twin_run(place(scenario, repository, ProfileBook.load(profiles)))
    (deployment,) = result["deployments"]
    return {
        "throughput_rps": deployment["answered"] / measured["seconds"],
        "p50_ms": deployment["latency_ms"]["p50"],
        "p99_ms": deployment["latency_ms"]["p99"],
        "shed_429": deployment["shed_429"],
    }


def errors(measured: dict, twin: dict) -> dict:
    found = {}
    for name, key in (("throughput", "throughput_rps"), ("p50", "p50_ms"), ("p99", "p99_ms")):
        m, t = measured[key], twin[key]
        found[name] = None if not m or t is None else round(abs(t - m) / m, 4)
    return found


# ------------------------------------------------------------------------------ the runs
def minilm_requests(port: int, key: str, name: str, sentences: list[str]) -> list[bytes]:
    from kcloud.serving.oip import encode_infer_request

    raw = []
    for sentence in sentences:
        body, headers = encode_infer_request(
            {"text": np.array([sentence.encode()], dtype=object)}, binary=True, binary_outputs=True
        )
        raw.append(
            http_request(
                port, f"/v2/models/{name}/infer", body, {**headers, "Authorization": f"Bearer {key}"}
            )
        )
    return raw


def digits_requests(port: int, key: str, count: int = 64) -> list[bytes]:
    from kcloud.serving.oip import encode_infer_request

    rng = np.random.default_rng(5)
    raw = []
    for _ in range(count):
        image = rng.integers(0, 17, (1, 1, 8, 8)).astype(np.float32)
        body, headers = encode_infer_request({"image": image}, binary=True, binary_outputs=True)
        raw.append(
            http_request(
                port, f"/v2/models/{DIGITS}/infer", body, {**headers, "Authorization": f"Bearer {key}"}
            )
        )
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "twin_fidelity.json")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run below saturation")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    from tokenizers import Tokenizer

    repository = ModelRepository(default_repository_path())
    entry = repository.get(MINILM)
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 64, TOKENS_PER_SENTENCE)
    home = benchmark_home(repository)
    twin_repository = ModelRepository(home / "models")
    profiles = home / "twin-profiles"
    key = admin_key(home)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-twin-fidelity-{port}.log"
    print(f"starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    server = start_server(port, home, log_path)
    runs: list[dict] = []
    calibration: dict[str, dict] = {}
    try:
        wait_ready(port, server, 600, log_path)
        api = Api(port, key)
        api.call("POST", "/api/v1/deployments", json={"model": MINILM, "name": TWO, "replicas": 2})
        deadline = time.monotonic() + 300
        while api.client.get(f"/api/v1/deployments/{TWO}").json()["running"] < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the two-replica deployment did not start in 300 s")
            time.sleep(0.5)
        bodies = {
            MINILM: minilm_requests(port, key, MINILM, sentences),
            MINILM_Q10: minilm_requests(port, key, MINILM_Q10, sentences),
            TWO: minilm_requests(port, key, TWO, sentences),
            DIGITS: digits_requests(port, key),
        }
        for name in (MINILM, DIGITS):
            asyncio.run(offer(port, bodies[name], [Phase("warm-up", 20, 3)], args.seed))

        def one(
            role: str, label: str, served: str, model: str, replicas: int, fraction: float, seconds: float
        ) -> dict:
            rate = (
                fraction * calibration[model]["capacity_rps"] if fraction else calibration[model]["probe_rps"]
            )
            print(f"{role}: {label} at {rate:.0f} requests/s for {seconds:g} s", file=sys.stderr)
            measured = measure(port, key, served, model, bodies[served], rate, seconds, args.seed + len(runs))
            record = {
                "role": role,
                "run": label,
                "model": model,
                "served": served,
                "replicas": replicas,
                "load_fraction_of_capacity": fraction or None,
                "measured": measured,
            }
            runs.append(record)
            return record

        for model, probe in ((MINILM, 600.0), (DIGITS, 4000.0)):
            # a probe far over capacity, then the saturating run just over what it measured: far over,
            # the load generator and the refusals take CPU from the server on 2 cores
            calibration[model] = {"probe_rps": probe}
            probed = one("calibration", "probe (far over capacity)", model, model, 1, 0.0, 15)["measured"]
            calibration[model] = {"probe_rps": 1.2 * probed["throughput_rps"]}
            saturated = one("calibration", "saturating (1.2 × probe)", model, model, 1, 0.0, 15)["measured"]
            calibration[model]["capacity_rps"] = saturated["throughput_rps"]
            light = one("calibration", "light (15 %)", model, model, 1, 0.15, args.seconds)["measured"]
            a, c = fit_service(saturated, light)
            max_batch = repository.get(model).config.batching.max_batch_size
            for name in {MINILM, MINILM_Q10} if model == MINILM else {model}:
                write_profile(profiles, name, max_batch, a, c, f"twin_fidelity calibration of {model}")
            # gateway-bound when the device alone would have served clearly more than was served
            device_only = predict(twin_repository, profiles, model, 1, saturated, 0.0, 0.0, home)
            served = max(probed["throughput_rps"], saturated["throughput_rps"])  # the gateway did this much
            gateway_ms = 1000 / served if device_only["throughput_rps"] > 1.1 * served else 0.0
            no_overhead = predict(twin_repository, profiles, model, 1, light, 0.0, gateway_ms, home)
            overhead = max(0.0, light["p50_ms"] - no_overhead["p50_ms"])
            calibration[model] |= {
                "service_a_ms": round(a * 1000, 4),
                "service_c_ms_per_row": round(c * 1000, 4),
                "gateway_ms": round(gateway_ms, 4),
                "overhead_ms": round(overhead, 3),
            }
        plan = [
            (MINILM, MINILM, 1, 0.5, args.seconds),
            (MINILM, MINILM, 1, 0.8, args.seconds),
            (MINILM, MINILM, 1, 1.5, 20),
            (MINILM_Q10, MINILM, 1, 0.5, args.seconds),
            (TWO, MINILM, 2, 0.8, args.seconds),
            (DIGITS, DIGITS, 1, 0.5, args.seconds),
            (DIGITS, DIGITS, 1, 0.8, args.seconds),
            (DIGITS, DIGITS, 1, 1.5, 20),
        ]
        for served, model, replicas, fraction, seconds in plan:
            label = f"{served} ×{replicas} at {fraction:.0%} of capacity"
            one("validation", label, served, model, replicas, fraction, seconds)
    finally:
        stop_up(server)

    for record in runs:
        model = record["model"]
        twin_model = MINILM_Q10 if record["served"] == MINILM_Q10 else model
        twin = predict(
            twin_repository,
            profiles,
            twin_model,
            record["replicas"],
            record["measured"],
            calibration[model]["overhead_ms"],
            calibration[model]["gateway_ms"],
            home,
        )
        record["twin"] = twin
        record["error"] = errors(record["measured"], twin)
        del record["measured"]["arrivals_s"]
    validation = [r for r in runs if r["role"] == "validation"]
    worst = {
        name: max((r["error"][name] for r in validation if r["error"][name] is not None), default=None)
        for name in TARGETS
    }
    report = {
        "benchmark": "twin_fidelity",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "calibration": calibration,
        "runs": runs,
        "targets": TARGETS,
        "worst_validation_error": worst,
        "met": {name: worst[name] is not None and worst[name] <= limit for name, limit in TARGETS.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    for r in runs:
        m, t = r["measured"], r["twin"]
        print(
            f"{r['role']:11} {r['run']:42} thr {m['throughput_rps']:8.1f} / {t['throughput_rps']:8.1f}  "
            f"p50 {m['p50_ms'] or 0:7.1f} / {t['p50_ms'] or 0:7.1f}  p99 {m['p99_ms'] or 0:7.1f} / "
            f"{t['p99_ms'] or 0:7.1f}  err {r['error']}"
        )


if __name__ == "__main__":
    main()
