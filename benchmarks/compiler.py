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

4. MiniLM split into 2 and 3 stages (`kcloud.models.partition`, balanced by a measured profile)
   and run as a pipeline (`PipelineWorker`, one worker process per stage, one intra-op thread each,
   micro-batches of 4 rows) against the whole graph in one worker process: throughput with 8
   batches of 16 sentences in flight, latency of one batch alone, and the pipeline's efficiency
   (its throughput against its slowest stage's alone on the same micro-batches).

Goal (issue 20): MiniLM ≥ 1.6x at ≥ 0.99 minimum cosine; digits top-1 within 1 point.
Writes benchmarks/results/compiler.json and prints it.

    python benchmarks/compiler.py [--seconds 1.5] [--rounds 3] [--force]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.builtin import DIGITS, MINILM, ensure_builtin_models
from kcloud.models.compiler import compile_model, rows_per_second
from kcloud.models.datasets import load_dataset, row_cosines
from kcloud.models.gate import run_outputs
from kcloud.models.partition import partition
from kcloud.models.pipelines import graph_feeds
from kcloud.models.repository import ModelEntry, ModelRepository, default_repository_path
from kcloud.runtimes import create_session
from kcloud.serving.pipeline_worker import PipelineWorker, StageIO
from kcloud.serving.worker import ProcessWorker

RESULTS = Path(__file__).resolve().parent / "results" / "compiler.json"
BATCHES = {MINILM: (1, 16, 64), DIGITS: (1, 64)}


def host_device() -> Device:
    return Device(
        id="cpu0",
        node=platform.node() or "local",
        plugin="cpu",
        vendor="cpu",
        spec=load_catalog().get("cpu-generic"),
        name=platform.processor() or "host CPU",
    )


def throughput(entry: ModelEntry, int8: Path, seconds: float, rounds: int) -> list[dict[str, Any]]:
    device = host_device()
    sessions = {
        "fp32": create_session(entry.weights_path, device, threads=1),
        "int8": create_session(int8, device, threads=1),
    }
    samples = load_dataset(entry).inputs
    figures = []
    for batch in BATCHES[entry.name]:
        feed = graph_feeds(entry, samples[:batch], batch=batch)[0]
        measured: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, session in sessions.items():
                measured[name].append(rows_per_second(session, feed, seconds, min_runs=3))
        fp32, int8_rate = statistics.median(measured["fp32"]), statistics.median(measured["int8"])
        figures.append(
            {
                "batch": batch,
                "fp32_rows_per_s": fp32,
                "int8_rows_per_s": int8_rate,
                "ratio": int8_rate / fp32,
                "rounds": measured,
            }
        )
    return figures


def accuracy(entry: ModelEntry, int8: Path) -> dict[str, Any]:
    dataset = load_dataset(entry)
    fp32_out = run_outputs(entry, entry.weights_path, dataset.inputs, dataset.output)
    int8_out = run_outputs(entry, int8, dataset.inputs, dataset.output)
    result: dict[str, Any] = {
        "metric": dataset.metric,
        "samples": len(dataset),
        "fp32": dataset.score(fp32_out),
        "int8": dataset.score(int8_out),
    }
    if dataset.metric == "cosine":
        cosine = row_cosines(int8_out, fp32_out)
        result.update(min_cosine_to_fp32=float(cosine.min()), mean_cosine_to_fp32=float(cosine.mean()))
    else:
        result["points_lost"] = 100 * (result["fp32"] - result["int8"])
    return result


PIPELINE_BATCH, IN_FLIGHT, MICRO_BATCH = 16, 8, 4


async def _pipeline_figures(entry: ModelEntry, stages: int, workdir: Path, seconds: float) -> dict[str, Any]:
    samples = load_dataset(entry).inputs
    feed = graph_feeds(entry, samples[:PIPELINE_BATCH], batch=PIPELINE_BATCH)[0]
    parts = (
        partition(entry.weights_path, stages, workdir, feeds=graph_feeds(entry, samples[:16])[:2])
        if stages > 1
        else None
    )
    paths = [s.path for s in parts.stages] if parts else [entry.weights_path]
    workers = [ProcessWorker(path, host_device(), threads=1) for path in paths]
    io = (
        [StageIO(s.inputs, s.outputs) for s in parts.stages]
        if parts
        else [StageIO(tuple(feed), ("embedding",))]
    )
    pipeline = PipelineWorker(
        workers, io, ["embedding"], micro_batch=MICRO_BATCH if parts else PIPELINE_BATCH
    )
    await pipeline.start()
    try:
        request = [(PIPELINE_BATCH, None)]
        await pipeline.run(feed, request)
        latencies = []
        for _ in range(5):
            start = time.perf_counter()
            await pipeline.run(feed, request)
            latencies.append(time.perf_counter() - start)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await asyncio.gather(*(pipeline.run(feed, request) for _ in range(IN_FLIGHT)))
            done += IN_FLIGHT * PIPELINE_BATCH
        throughput = done / (time.perf_counter() - start)
        # Each stage alone on the same micro-batches: the rate the pipeline can at best approach.
        alone = []
        carried = (
            [
                {k: v[i : i + MICRO_BATCH] for k, v in feed.items()}
                for i in range(0, PIPELINE_BATCH, MICRO_BATCH)
            ]
            if parts
            else [feed]
        )
        for worker, stage in zip(workers, io, strict=True):
            rows = sum(next(iter(c.values())).shape[0] for c in carried)
            runs, start = 0, time.perf_counter()
            outs = []
            while time.perf_counter() - start < seconds / 2 or runs < 2:
                outs = [
                    await worker.run(
                        {n: c[n] for n in stage.inputs}, [(next(iter(c.values())).shape[0], None)]
                    )
                    for c in carried
                ]
                runs += 1
            alone.append(runs * rows / (time.perf_counter() - start))
            carried = [{**c, **(o.outputs or {})} for c, o in zip(carried, outs, strict=True)]
    finally:
        await pipeline.close()
    return {
        "stages": stages,
        "throughput_rows_per_s": throughput,
        "latency_ms_batch_alone": 1000 * statistics.median(latencies),
        "stage_rows_per_s_alone": alone,
        "efficiency": throughput / min(alone),
        "balance": parts.balance if parts else 1.0,
        "stage_weight_bytes": [s.weight_bytes for s in parts.stages] if parts else None,
    }


def pipelines(entry: ModelEntry, seconds: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:
        return [
            asyncio.run(_pipeline_figures(entry, stages, Path(scratch) / str(stages), seconds))
            for stages in (1, 2, 3)
        ]


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
    report["pipelines"] = {
        "model": MINILM,
        "batch": PIPELINE_BATCH,
        "in_flight": IN_FLIGHT,
        "micro_batch": MICRO_BATCH,
        "threads_per_stage": 1,
        "host_cores": os.cpu_count(),
        "runs": pipelines(repository.get(MINILM), args.seconds * 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
