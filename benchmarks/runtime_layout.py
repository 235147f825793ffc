"""Which session layout serves fastest on this machine's CPU, and what a worker costs per batch.

Two measurements, one run, this machine (the figures justify `kcloud.runtimes.default_layout`):

(a) layout: for all-MiniLM-L6-v2 (batches of 32-token sentences) and digits-cnn (8x8 images),
    each `sessions x threads` layout with sessions x threads <= cores: every session built by
    `kcloud.runtimes.create_session` (the serving path's own options), each looping `run` on
    the same batch in its own Python thread (ONNX Runtime releases the GIL) for a fixed time
    after a warm-up, in interleaved rounds (median kept, so background load on a shared machine
    hits every layout alike). Throughput in rows/s per batch size, the best layout per batch size,
    and rows per CPU-second this process used: what each layout costs the cores (ORT's intra-op
    threads spin while they wait, which shows there).
(b) worker overhead: the time one batch takes through `ThreadWorker.run` and `ProcessWorker.run`
    (asyncio, one batch at a time) minus a direct `session.run` of the same batch in this
    thread, with the `noop` model (Identity on FP32 [-1, 16]) at 1, 64 and 768 rows (768 rows
    = 48 KiB each way, MiniLM's output size for a batch of 32). Mean and median, in µs.

Models come from the built-in repository (`ensure_builtin_models`, built locally on first use).
Writes benchmarks/results/runtime_layout.json and prints it.

    python benchmarks/runtime_layout.py [--seconds 1.5] [--rounds 3] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.builtin import DIGITS, MINILM, NOOP, ensure_builtin_models
from kcloud.models.repository import ModelRepository, default_repository_path
from kcloud.runtimes import create_session, default_layout, host_cores
from kcloud.serving.worker import ProcessWorker, ThreadWorker

RESULTS = Path(__file__).resolve().parent / "results" / "runtime_layout.json"
TOKENS = 32
MINILM_BATCHES = (1, 8, 32, 64)
DIGITS_BATCHES = (1, 32, 128)
OVERHEAD_ROWS = (1, 64, 768)


def host_device() -> Device:
    return Device(id="cpu0", node=platform.node() or "local", plugin="cpu", vendor="cpu",
                  spec=load_catalog().get("cpu-generic"), name=platform.processor() or "host CPU")


def minilm_feeds(session: ort.InferenceSession, rows: int) -> dict[str, np.ndarray]:
    """`rows` sequences of exactly 32 tokens ([CLS] ... [SEP]); the cost does not depend on the ids."""
    rng = np.random.default_rng(rows)
    ids = rng.integers(1000, 29000, size=(rows, TOKENS), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if any(i.name == "token_type_ids" for i in session.get_inputs()):
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def digits_feeds(session: ort.InferenceSession, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {"image": rng.uniform(0, 16, size=(rows, 1, 8, 8)).astype(np.float32)}


def layouts(cores: int) -> list[tuple[int, int]]:
    powers = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= cores]
    if cores not in powers:
        powers.append(cores)
    return [(s, t) for s in powers for t in powers if s * t <= cores]


def measure_layout(weights_path: Path, device: Device, make_feeds, rows: int, sessions: int, threads: int,
                   seconds: float) -> tuple[float, float]:
    """Rows per second of wall time, and rows per CPU-second this process used (all its threads),
    for `sessions` sessions of `threads` threads, each looping in its own thread. The second
    figure shows what a layout costs the cores when other work shares them."""
    built = [create_session(weights_path, device, threads=threads) for _ in range(sessions)]
    feeds = make_feeds(built[0], rows)
    for session in built:  # warm-up: allocations, first-run kernel choices
        for _ in range(3):
            session.run(None, feeds)
    counts = [0] * sessions
    start = threading.Barrier(sessions + 1)
    stop = threading.Event()

    def loop(index: int) -> None:
        session = built[index]
        start.wait()
        while not stop.is_set():
            session.run(None, feeds)
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    for worker in workers:
        worker.start()
    start.wait()
    began, cpu_began = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    done = sum(counts) * rows
    return done / elapsed, done / cpu if cpu > 0 else float("nan")


def layout_table(name: str, weights_path: Path, device: Device, make_feeds, batches, cores: int,
                 seconds: float, rounds: int) -> dict:
    """Each layout measured `rounds` times, interleaved with the others so that background load
    on a shared machine hits every layout alike; the median round is the figure."""
    table: dict = {"model": name, "by_batch": []}
    for rows in batches:
        rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts(cores)}
        per_cpu: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts(cores)}
        for _ in range(rounds):
            for sessions, threads in rates:
                rate, rate_cpu = measure_layout(weights_path, device, make_feeds, rows, sessions, threads,
                                                seconds)
                rates[(sessions, threads)].append(rate)
                per_cpu[(sessions, threads)].append(rate_cpu)
        results = []
        for (sessions, threads), values in rates.items():
            rate = statistics.median(values)
            rate_cpu = statistics.median(per_cpu[(sessions, threads)])
            results.append({"sessions": sessions, "threads": threads, "rows_per_s": round(rate, 1),
                            "rows_per_cpu_s": round(rate_cpu, 1),
                            "best_round_rows_per_s": round(max(values), 1),
                            "rounds_rows_per_s": [round(v, 1) for v in values]})
            print(f"  {name:18s} batch {rows:4d}  {sessions} x {threads} threads: {rate:10.1f} rows/s "
                  f"{rate_cpu:10.1f} rows/cpu-s (rounds: {', '.join(f'{v:.1f}' for v in values)})",
                  flush=True)
        best = max(results, key=lambda r: r["rows_per_s"])
        table["by_batch"].append({"batch_rows": rows, "layouts": results,
                                  "best": {"sessions": best["sessions"], "threads": best["threads"]}})
    return table


def _stats(samples: list[float]) -> dict[str, float]:
    return {"mean_us": round(statistics.fmean(samples) * 1e6, 1),
            "median_us": round(statistics.median(samples) * 1e6, 1)}


async def worker_overhead(weights_path: Path, device: Device, calls: int) -> list[dict]:
    direct = create_session(weights_path, device, threads=1)
    thread_worker = ThreadWorker(weights_path, device, threads=1)
    process_worker = ProcessWorker(weights_path, device, threads=1)
    await thread_worker.start()
    await process_worker.start()
    results = []
    try:
        for rows in OVERHEAD_ROWS:
            feeds = {"input": np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)}
            timings: dict[str, list[float]] = {"direct": [], "thread": [], "process": []}
            for _ in range(max(1, calls // 10)):  # warm-up
                direct.run(None, feeds)
                await thread_worker.run(feeds)
                await process_worker.run(feeds)
            for _ in range(calls):  # interleaved, so background load hits all three alike
                began = time.perf_counter()
                direct.run(None, feeds)
                timings["direct"].append(time.perf_counter() - began)
                began = time.perf_counter()
                await thread_worker.run(feeds)
                timings["thread"].append(time.perf_counter() - began)
                began = time.perf_counter()
                await process_worker.run(feeds)
                timings["process"].append(time.perf_counter() - began)
            base = {kind: _stats(values) for kind, values in timings.items()}
            entry = {"rows": rows, "payload_bytes_each_way": rows * 16 * 4, "calls": calls, **base}
            for kind in ("thread", "process"):
                entry[f"{kind}_overhead_us"] = {
                    "mean": round(base[kind]["mean_us"] - base["direct"]["mean_us"], 1),
                    "median": round(base[kind]["median_us"] - base["direct"]["median_us"], 1),
                }
            print(f"  noop {rows:4d} rows: direct {base['direct']['median_us']:.0f} µs, "
                  f"thread +{entry['thread_overhead_us']['median']:.0f} µs, "
                  f"process +{entry['process_overhead_us']['median']:.0f} µs (medians)", flush=True)
            results.append(entry)
    finally:
        await thread_worker.close()
        await process_worker.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per layout, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point (median kept)")
    parser.add_argument("--cores", type=int, default=None, help="cores to plan for (default: this process's)")
    parser.add_argument("--calls", type=int, default=2000, help="batches per worker-overhead point")
    args = parser.parse_args()
    cores = args.cores or host_cores()
    device = host_device()
    repo = ModelRepository(default_repository_path())
    minilm, digits, noop = ensure_builtin_models(repo, include=[MINILM, DIGITS, NOOP])
    print(f"layouts on {cores} cores ({args.rounds} rounds of {args.seconds:g} s each)", flush=True)
    started = time.time()
    tables = [
        layout_table(MINILM, minilm.weights_path, device, minilm_feeds, MINILM_BATCHES, cores, args.seconds,
                     args.rounds),
        layout_table(DIGITS, digits.weights_path, device, digits_feeds, DIGITS_BATCHES, cores, args.seconds,
                     args.rounds),
    ]
    print("worker overhead per batch (noop model)", flush=True)
    overhead = asyncio.run(worker_overhead(noop.weights_path, device, args.calls))
    result = {
        "benchmark": "runtime_layout",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "onnxruntime": ort.__version__},
        "settings": {"seconds_per_point": args.seconds, "rounds": args.rounds, "minilm_tokens": TOKENS,
                     "session_options": "intra_op=threads, inter_op=1, sequential, ORT_ENABLE_ALL"},
        "layouts": tables,
        "default_layout_cpu": dict(zip(("replicas", "threads"), default_layout(device, cores), strict=True)),
        "worker_overhead": overhead,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":  # required: ProcessWorker spawns children that re-import this module
    main()
