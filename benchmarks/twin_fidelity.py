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
- how much batch times vary (`service_sigma`): a lognormal fitted by maximum likelihood to the
  light run's `kcloud_compute_seconds` bucket counts, written into the same profile;
- the gateway's CPU per request (`gateway_ms`, spent serially): where the twin's device alone
  would have served more than 1.1× the most either saturating run served, under the probe's load,
  the gateway was the bottleneck, and its time per request is one over that throughput; else 0;
- a fixed delay per request (`overhead_ms`): the light run's measured p50 less the twin's p50
  for that run without it.

**Validation** (runs the calibration never saw): other loads (50 % and 80 % of capacity), an
overload (150 %), another batching setting (a copy of MiniLM whose queue delay is 10 ms instead
of 2 ms), and another replica count (two replicas of MiniLM on the one CPU). The twin replays
each run's recorded arrival times (a trace), so arrival noise is the same on both sides; it
predicts throughput (answered requests per second), p50 and p99 of the answered requests.

**Repeatability**: two validation runs are measured twice, with the same arrivals. How far the
second differs from the first is how far this machine repeats itself: no prediction can be judged
more finely than that.

Every figure of both sides and each prediction's error go into the JSON. The targets (issue 17):
throughput error ≤ 5 %, p50 ≤ 5 %, p99 ≤ 10 %. Everything binds and connects to 127.0.0.1 only.
About 10 minutes on 2 cores. The measured runs (every request's arrival, status and latency, and
the server's histograms) are kept in a second file, so the twin can be recalibrated and re-judged
without measuring again (`--from-runs`).

    .venv/bin/python benchmarks/twin_fidelity.py   # writes benchmarks/results/twin_fidelity.json
    .venv/bin/python benchmarks/twin_fidelity.py --from-runs   # re-judge the kept runs
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
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
from kcloud.serving.http_protocol import DEFAULT_MAX_CONNECTIONS_PER_CLIENT  # noqa: E402
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


HISTOGRAMS = ("kcloud_batch_rows", "kcloud_compute_seconds", "kcloud_queue_seconds", "kcloud_request_seconds")


def server_metrics(port: int, key: str, model: str) -> dict[str, float]:
    """The server's histograms for `model` so far: every `_bucket`, `_sum` and `_count` sample of
    batch rows, compute, queue and request seconds, keyed by metric name and bucket bound."""
    text = httpx.get(
        f"http://127.0.0.1:{port}/metrics", timeout=10, headers={"Authorization": f"Bearer {key}"}
    ).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if f'model="{model}"' not in line or not line.startswith(HISTOGRAMS):
            continue
        name, value = line.rsplit(" ", 1)
        metric = name.split("{", 1)[0]
        bound = name.split('le="', 1)[1].split('"', 1)[0] if 'le="' in name else ""
        label = f"{metric}|{bound}"
        found[label] = found.get(label, 0.0) + float(value)  # summed over devices (replicas)
    return found


def buckets(metrics: dict[str, float], metric: str) -> list[tuple[float, float]]:
    """(upper bound, requests or batches in the bucket) of one histogram, from its cumulative counts."""
    cumulative = sorted(
        (float(label.split("|", 1)[1]), value)
        for label, value in metrics.items()
        if label.startswith(f"{metric}_bucket|")
    )
    found, below = [], 0.0
    for bound, count in cumulative:
        found.append((bound, count - below))
        below = count
    return found


def measure(
    port: int, key: str, name: str, requests: list[bytes], rate: float, seconds: float, seed: int
) -> dict:
    """One open-loop Poisson run at `rate` against served name `name`; what the client and server saw."""
    before = server_metrics(port, key, name)
    outcomes, _ = asyncio.run(offer(port, requests, [Phase("run", rate, seconds)], seed))
    after = server_metrics(port, key, name)
    server = {label: value - before.get(label, 0.0) for label, value in after.items()}
    batches = server.get("kcloud_batch_rows_count|", 0.0)
    rows = server.get("kcloud_batch_rows_sum|", 0.0)
    compute = server.get("kcloud_compute_seconds_sum|", 0.0)
    outcomes.sort(key=lambda o: o.sent_at)
    return {
        "offered_rps": rate,
        "seconds": seconds,
        "requests": len(outcomes),
        "batches": batches,
        "mean_batch_rows": rows / batches if batches else None,
        "mean_compute_ms": compute / batches * 1000 if batches else None,
        "server": server,
        "arrivals_s": [o.sent_at for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "latencies_s": [o.latency_s for o in outcomes],
    }


def summary(measured: dict) -> dict:
    """Throughput and latency percentiles of the answered requests, and the count of each status."""
    status = np.array(measured["statuses"])
    ok = np.array(measured["latencies_s"])[status == 200]
    counts = {str(code): int((status == code).sum()) for code in sorted(set(status.tolist()))}
    return {
        "offered_rps": measured["offered_rps"],
        "seconds": measured["seconds"],
        "requests": measured["requests"],
        "statuses": counts,
        "throughput_rps": len(ok) / measured["seconds"],
        "p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
        "p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
        "mean_batch_rows": measured["mean_batch_rows"],
        "mean_compute_ms": measured["mean_compute_ms"],
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


_erf = np.vectorize(math.erf)


def fit_spread(measured: dict) -> float:
    """The log-space standard deviation of a run's batch compute times: a lognormal fitted by
    maximum likelihood to the server's `kcloud_compute_seconds` bucket counts (the histogram is all
    the server keeps of them)."""
    every = buckets(measured["server"], "kcloud_compute_seconds")
    found = [(bound, n) for bound, n in every if n > 0]
    if len(found) < 2:
        return 0.0  # every batch in one bucket: no spread this histogram can tell
    lower = {bound: below for (below, _), (bound, _) in itertools.pairwise([(1e-9, 0.0), *every])}
    low = np.log([lower[b] for b, _ in found])
    high = np.log([b for b, _ in found])  # the +Inf bucket: log gives inf, its CDF 1
    counts = np.array([n for _, n in found])
    centre = math.log(measured["mean_compute_ms"] / 1000)
    mus = centre + np.linspace(-2.0, 1.0, 301)[:, None, None]
    sigmas = np.linspace(0.01, 2.0, 200)[None, :, None]

    def cdf(x: np.ndarray) -> np.ndarray:
        return 0.5 * (1 + _erf((x - mus) / (sigmas * math.sqrt(2))))

    mass = np.clip(cdf(high) - cdf(low), 1e-300, None)
    likelihood = (counts * np.log(mass)).sum(axis=2)
    _, best = np.unravel_index(np.argmax(likelihood), likelihood.shape)
    return float(sigmas[0, best, 0])


#: Latency percentiles the stalls are fitted to (the tail of a light run).
TAIL = (90, 99, 99.9)


def fit_pauses(light: dict, twin_of: Callable[[dict | None], dict]) -> dict | None:
    """The gateway stalls (`[twin] pauses`) that bring the twin's tail of the light run closest to
    the measured one: a grid over mean gap and mean length, judged by the squared log ratio of the
    percentiles in `TAIL` (None: no stalls fit better than none)."""
    status = np.array(light["statuses"])
    measured = np.percentile(np.array(light["latencies_s"])[status == 200], TAIL) * 1000

    def misfit(pauses: dict | None) -> float:
        tail = np.array(twin_of(pauses)["tail_ms"], dtype=float)
        return float((np.log(np.maximum(tail, 1e-3) / measured) ** 2).sum())

    best, best_misfit = None, misfit(None)
    for every_s in np.geomspace(0.25, 30.0, 10):
        for mean_ms in np.geomspace(1.0, 300.0, 10):
            candidate = {"every_s": round(float(every_s), 4), "mean_ms": round(float(mean_ms), 3)}
            if candidate["mean_ms"] / 1000 >= candidate["every_s"] / 4:  # stalled a fifth of the time or more
                continue
            found = misfit(candidate)
            if found < best_misfit:
                best, best_misfit = candidate, found
    return best


def write_profile(
    directory: Path, model: str, max_batch: int, a: float, c: float, sigma: float, source: str
) -> None:
    points = [(b, a + c * b) for b in sorted({1, max_batch})]
    save_measured_profile(
        MeasuredProfileFile(
            chip_key="cpu-generic",
            device_uid="host/cpu0",
            model=model,
            latency_by_batch=points,
            source=source,
            service_sigma=sigma,
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
    pauses: dict | None = None,
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
                "pauses": pauses,
                # the load generator is one client of `kcloud up`, whose cap it meets in overload
                "most_open_per_client": DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
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
    trace.unlink()
    (deployment,) = result["deployments"]
    return {
        "throughput_rps": deployment["answered"] / measured["seconds"],
        "p50_ms": deployment["latency_ms"]["p50"],
        "p99_ms": deployment["latency_ms"]["p99"],
        "tail_ms": [deployment["latency_ms"][f"p{q:g}"] for q in TAIL],
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


PROBE, SATURATING, LIGHT = "probe (far over capacity)", "saturating (1.2 × probe)", "light (15 %)"
#: Held-out runs: (served name, model, replicas, fraction of capacity, seconds; None: --seconds).
VALIDATION = [
    (MINILM, MINILM, 1, 0.5, None),
    (MINILM, MINILM, 1, 0.8, None),
    (MINILM, MINILM, 1, 1.5, 20.0),
    (MINILM_Q10, MINILM, 1, 0.5, None),
    (TWO, MINILM, 2, 0.8, None),
    (DIGITS, DIGITS, 1, 0.5, None),
    (DIGITS, DIGITS, 1, 0.8, None),
    (DIGITS, DIGITS, 1, 1.5, 20.0),
]
#: Validation runs measured twice with the same arrivals: how far the system repeats itself.
REPEATED = [(MINILM, 0.8), (DIGITS, 0.8)]


def label_of(served: str, replicas: int, fraction: float) -> str:
    return f"{served} ×{replicas} at {fraction:.0%} of capacity"


def measure_runs(args: argparse.Namespace, repository: ModelRepository, home: Path) -> list[dict]:
    """Every run of the real system, calibration then validation, as measured (arrivals included)."""
    from tokenizers import Tokenizer

    entry = repository.get(MINILM)
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 64, TOKENS_PER_SENTENCE)
    key = admin_key(home)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-twin-fidelity-{port}.log"
    print(f"starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    server = start_server(port, home, log_path)
    runs: list[dict] = []
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

        def one(role: str, label: str, served: str, model: str, replicas: int, rate: float, seconds: float,
                fraction: float | None = None, seed: int | None = None) -> dict:
            print(f"{role}: {label} at {rate:.0f} requests/s for {seconds:g} s", file=sys.stderr)
            seed = args.seed + len(runs) if seed is None else seed
            record = {
                "role": role,
                "run": label,
                "model": model,
                "served": served,
                "replicas": replicas,
                "load_fraction_of_capacity": fraction,
                "seed": seed,
                "measured": measure(port, key, served, bodies[served], rate, seconds, seed),
            }
            runs.append(record)
            return record

        capacity = {}
        for model, probe in ((MINILM, 600.0), (DIGITS, 4000.0)):
            # a probe far over capacity, then the saturating run just over what it measured: far over,
            # the load generator and the refusals take CPU from the server on 2 cores
            probed = summary(one("calibration", PROBE, model, model, 1, probe, 15)["measured"])
            rate = 1.2 * probed["throughput_rps"]
            capacity[model] = summary(
                one("calibration", SATURATING, model, model, 1, rate, 15)["measured"]
            )["throughput_rps"]
            one("calibration", LIGHT, model, model, 1, 0.15 * capacity[model], args.seconds, 0.15)
        for served, model, replicas, fraction, seconds in VALIDATION:
            label = label_of(served, replicas, fraction)
            one("validation", label, served, model, replicas, fraction * capacity[model],
                seconds or args.seconds, fraction)
        for served, fraction in REPEATED:
            (first,) = (r for r in runs if r["run"] == label_of(served, 1, fraction))
            measured = first["measured"]
            again = one("validation", f"{first['run']}, again", served, first["model"], 1,
                        measured["offered_rps"], measured["seconds"], fraction, first["seed"])
            again["repeat_of"] = first["run"]
    finally:
        stop_up(server)
    return runs


def calibrate(runs: list[dict], repository: ModelRepository, profiles: Path, workdir: Path) -> dict:
    """Per model, from its three calibration runs alone: service line, spread, gateway, fixed delay.
    Writes the measured profiles the predictions read."""
    calibration: dict[str, dict] = {}
    for model in (MINILM, DIGITS):
        mine = [r for r in runs if r["role"] == "calibration" and r["model"] == model]
        by_label = {r["run"]: r["measured"] for r in mine}
        probed, saturated, light = by_label[PROBE], by_label[SATURATING], by_label[LIGHT]
        a, c = fit_service(saturated, light)
        sigma = fit_spread(light)
        max_batch = repository.get(model).config.batching.max_batch_size
        for name in {MINILM, MINILM_Q10} if model == MINILM else {model}:
            write_profile(profiles, name, max_batch, a, c, sigma, f"twin_fidelity calibration of {model}")
        # gateway-bound when the device alone would have served clearly more than was served, far
        # over capacity (just over it, the device alone serves about what was offered either way)
        device_only = predict(repository, profiles, model, 1, probed, 0.0, 0.0, workdir)
        served = max(summary(probed)["throughput_rps"], summary(saturated)["throughput_rps"])
        gateway_ms = 1000 / served if device_only["throughput_rps"] > 1.1 * served else 0.0
        no_overhead = predict(repository, profiles, model, 1, light, 0.0, gateway_ms, workdir)
        overhead = max(0.0, summary(light)["p50_ms"] - no_overhead["p50_ms"])
        twin_of_light = functools.partial(
            predict, repository, profiles, model, 1, light, overhead, gateway_ms, workdir
        )
        pauses = fit_pauses(light, twin_of_light)
        if pauses is not None:  # the fixed delay again, now that stalls take some of the p50
            stalled = predict(repository, profiles, model, 1, light, 0.0, gateway_ms, workdir, pauses)
            overhead = max(0.0, summary(light)["p50_ms"] - stalled["p50_ms"])
        calibration[model] = {
            "capacity_rps": round(summary(saturated)["throughput_rps"], 2),
            "service_a_ms": round(a * 1000, 4),
            "service_c_ms_per_row": round(c * 1000, 4),
            "service_sigma": round(sigma, 3),
            "gateway_ms": round(gateway_ms, 4),
            "overhead_ms": round(overhead, 3),
            "pauses": pauses,
        }
    return calibration


def evaluate(runs: list[dict], repository: ModelRepository, home: Path) -> dict:
    """Calibrate on the calibration runs, predict every run, and compare."""
    profiles = home / "twin-profiles"
    shutil.rmtree(profiles, ignore_errors=True)
    calibration = calibrate(runs, repository, profiles, home)
    records = []
    for run in runs:
        model = run["model"]
        measured = summary(run["measured"])
        twin = predict(
            repository,
            profiles,
            MINILM_Q10 if run["served"] == MINILM_Q10 else model,
            run["replicas"],
            run["measured"],
            calibration[model]["overhead_ms"],
            calibration[model]["gateway_ms"],
            home,
            calibration[model]["pauses"],
        )
        record = {k: v for k, v in run.items() if k != "measured"}
        records.append(record | {"measured": measured, "twin": twin, "error": errors(measured, twin)})
    validation = [r for r in records if r["role"] == "validation"]
    worst = {
        name: max((r["error"][name] for r in validation if r["error"][name] is not None), default=None)
        for name in TARGETS
    }
    by_label = {r["run"]: r for r in records}
    repeatability = [
        {"run": r["repeat_of"], "difference": errors(by_label[r["repeat_of"]]["measured"], r["measured"])}
        for r in records
        if "repeat_of" in r
    ]
    return {
        "benchmark": "twin_fidelity",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "calibration": calibration,
        "runs": records,
        "targets": TARGETS,
        "worst_validation_error": worst,
        "met": {name: worst[name] is not None and worst[name] <= limit for name, limit in TARGETS.items()},
        "repeatability": repeatability,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "twin_fidelity.json")
    parser.add_argument(
        "--runs",
        type=Path,
        default=HERE / "results" / "twin_fidelity_runs.json",
        help="where the measured runs are kept (every request's arrival, status and latency)",
    )
    parser.add_argument(
        "--from-runs", action="store_true", help="measure nothing: calibrate and predict from --runs"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run below saturation")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    repository = ModelRepository(default_repository_path())
    home = benchmark_home(repository)
    if args.from_runs:
        runs = json.loads(args.runs.read_text("utf-8"))["runs"]
    else:
        runs = measure_runs(args, repository, home)
        args.runs.parent.mkdir(parents=True, exist_ok=True)
        args.runs.write_text(json.dumps({"benchmark": "twin_fidelity runs", "runs": runs}))
    report = evaluate(runs, ModelRepository(home / "models"), home)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    for r in report["runs"]:
        m, t = r["measured"], r["twin"]
        print(
            f"{r['role']:11} {r['run']:48} thr {m['throughput_rps']:8.1f} / {t['throughput_rps']:8.1f}  "
            f"p50 {m['p50_ms'] or 0:7.1f} / {t['p50_ms'] or 0:7.1f}  p99 {m['p99_ms'] or 0:7.1f} / "
            f"{t['p99_ms'] or 0:7.1f}  err {r['error']}"
        )


if __name__ == "__main__":
    main()
