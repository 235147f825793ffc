"""INT8 artifacts against their FP32 source: throughput at the same thread layout, and accuracy.

For all-MiniLM-L6-v2 and digits-cnn (built locally on first use), one run:
1. `kcloud models compile MODEL --target cpu-int8` (cached when built before; `--force` rebuilds),
   with its build time and the gate's verdict on the held-out samples;
2. throughput of the FP32 source and the INT8 artifact, each in a session built by the serving
   path (`kcloud.runtimes.create_session`, one intra-op thread, the host CPU), looping `run` on
   the same batch of the model's own data-set samples, in interleaved rounds (median kept, so
   background load on a shared machine hits both alike), per batch size;
3. accuracy over the whole data set: the model's metric for both, and for MiniLM the minimum
   and mean cosine between the INT8 and FP32 embeddings of each sentence.

Goal (issue 20): MiniLM ≥ 1.6x at ≥ 0.99 minimum cosine; digits top-1 within 1 point.
Writes benchmarks/results/compiler.json and prints it.

    python benchmarks/compiler.py [--seconds 1.5] [--rounds 3] [--force]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.builtin import DIGITS, MINILM, ensure_builtin_models
from kcloud.models.compiler import compile_model
from kcloud.models.datasets import load_dataset
from kcloud.models.gate import run_outputs
from kcloud.models.quantize import graph_feeds
from kcloud.models.repository import ModelEntry, ModelRepository, default_repository_path
from kcloud.runtimes import create_session

RESULTS = Path(__file__).resolve().parent / "results" / "compiler.json"
BATCHES = {MINILM: (1, 16, 64), DIGITS: (1, 64)}


def host_device() -> Device:
    return Device(id="cpu0", node=platform.node() or "local", plugin="cpu", vendor="cpu",
                  spec=load_catalog().get("cpu-generic"), name=platform.processor() or "host CPU")


def rows_per_second(session: Any, feed: dict[str, np.ndarray], seconds: float) -> float:
    rows = next(iter(feed.values())).shape[0]
    session.run(None, feed)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        session.run(None, feed)
        runs += 1
    return runs * rows / elapsed


def throughput(entry: ModelEntry, int8: Path, seconds: float, rounds: int) -> list[dict[str, Any]]:
    device = host_device()
    sessions = {"fp32": create_session(entry.weights_path, device, threads=1),
                "int8": create_session(int8, device, threads=1)}
    samples = load_dataset(entry).inputs
    figures = []
    for batch in BATCHES[entry.name]:
        feed = graph_feeds(entry, samples[:batch], batch=batch)[0]
        measured: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, session in sessions.items():
                measured[name].append(rows_per_second(session, feed, seconds))
        fp32, int8_rate = statistics.median(measured["fp32"]), statistics.median(measured["int8"])
        figures.append({"batch": batch, "fp32_rows_per_s": fp32, "int8_rows_per_s": int8_rate,
                        "ratio": int8_rate / fp32, "rounds": measured})
    return figures


def accuracy(entry: ModelEntry, int8: Path) -> dict[str, Any]:
    dataset = load_dataset(entry)
    fp32_out = run_outputs(entry, entry.weights_path, dataset.inputs, dataset.output)
    int8_out = run_outputs(entry, int8, dataset.inputs, dataset.output)
    result: dict[str, Any] = {"metric": dataset.metric, "samples": len(dataset),
                              "fp32": dataset.score(fp32_out), "int8": dataset.score(int8_out)}
    if dataset.metric == "cosine":
        a, b = int8_out.astype(np.float64), fp32_out.astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        result.update(min_cosine_to_fp32=float(cosine.min()), mean_cosine_to_fp32=float(cosine.mean()))
    else:
        result["points_lost"] = 100 * (result["fp32"] - result["int8"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="rebuild the artifacts")
    args = parser.parse_args()
    repository = ModelRepository(default_repository_path())
    ensure_builtin_models(repository, include=(MINILM, DIGITS))
    report: dict[str, Any] = {"host": platform.processor() or platform.machine(), "threads": 1, "models": {}}
    for name in (MINILM, DIGITS):
        entry = repository.get(name)
        started = time.perf_counter()
        result = compile_model(entry, "cpu-int8", force=args.force)
        artifact = result.artifact
        report["models"][name] = {
            "artifact": artifact.describe(),
            "build_seconds": artifact.record["seconds"] if not result.cached else None,
            "cached": result.cached,
            "wall_seconds": time.perf_counter() - started,
            "gate": artifact.record["accuracy"],
            "build": {k: v for k, v in artifact.record["build"].items() if k != "trials"},
            "throughput": throughput(entry, artifact.path, args.seconds, args.rounds),
            "accuracy": accuracy(entry, artifact.path),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
