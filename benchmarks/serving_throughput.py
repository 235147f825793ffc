"""Served throughput vs the in-process ONNX Runtime limit, and the gateway's own overhead.

One run, on this machine, measures three things (issue 3, "Speed"):

(a) limit: the best batched throughput of all-MiniLM-L6-v2 in this process, on 32-token
    sentences, sweeping batch sizes and the session layouts the runtime supports
    (`sessions x threads`, each session looping `session.run` in its own thread; ONNX Runtime
    releases the GIL). Tokenisation is done once up front, so this is the graph's limit alone.
(b) served: the real gateway (`kcloud up` in a subprocess), 64 concurrent keep-alive clients,
    each sending one 32-token sentence per request over OIP v2 with binary tensors (input
    and output), for a fixed time after a warm-up; throughput, p50/p99 latency, and the ratio
    served / limit (target >= 0.85).
(c) overhead: the same gateway and client with the `noop` model (identity on FP32 [1, 16]) at
    concurrency 1 and 64: the HTTP + codec + router + batcher + worker IPC cost alone.

The load generator is a lean asyncio (uvloop) HTTP/1.1 client over pre-encoded requests: one
`transport.write` per request and a minimal response parse, so it takes little CPU from the
server on a 2-core machine; its own CPU time is measured and reported next to the server's.
Everything binds and connects to 127.0.0.1 only; every phase is bounded in time.

Writes benchmarks/results/serving_throughput.json and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import uvloop

MINILM = "all-MiniLM-L6-v2"
NOOP = "noop"
TOKENS_PER_SENTENCE = 32
RESULTS = Path(__file__).resolve().parent / "results" / "serving_throughput.json"
TARGET_RATIO = 0.85


# ------------------------------------------------------------------------------ workload
def sentences_of_exactly(tokenizer, count: int, tokens: int, seed: int = 7) -> list[str]:
    """`count` different English-word sentences that the model's tokenizer makes exactly `tokens`
    tokens long ([CLS] and [SEP] included), so every request costs the model the same."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3]
    vocab.sort()
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        words: list[str] = []
        while True:
            candidate = [*words, rng.choice(vocab)]
            n = len(tokenizer.encode(" ".join(candidate)).ids)
            if n == tokens:
                out.append(" ".join(candidate).capitalize() + ".")
                break
            if n < tokens:
                words = candidate
        # "." adds a token: check and drop the sentence if it does not fit exactly.
        if len(tokenizer.encode(out[-1]).ids) != tokens:
            out[-1] = out[-1][:-1]
            if len(tokenizer.encode(out[-1]).ids) != tokens:
                out.pop()
    return out


# ------------------------------------------------------------------- (a) in-process limit
@dataclass
class LimitPoint:
    sessions: int
    threads: int
    batch: int
    sentences_per_s: float


def measure_limit_point(onnx_path: Path, device, feeds: dict[str, np.ndarray], sessions: int,
                        threads: int, seconds: float) -> float:
    from kcloud.runtime.session import create_session

    made = [create_session(onnx_path, device, threads=threads) for _ in range(sessions)]
    names = [o.name for o in made[0].get_outputs()]
    for session in made:  # warm-up: first run allocates arenas
        session.run(names, feeds)
    rows = next(iter(feeds.values())).shape[0]
    counts = [0] * sessions
    start_line = threading.Barrier(sessions + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        session = made[index]
        start_line.wait()
        while time.perf_counter() < stop_at[0]:
            session.run(names, feeds)
            counts[index] += rows

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_line.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return sum(counts) / elapsed


def measure_limit(entry, device, sentences: list[str], seconds: float, cores: int) -> dict:
    from kcloud.models.pipelines import pipeline_for

    pipeline = pipeline_for(entry)
    text_input = entry.config.inputs[0].name
    max_batch = entry.config.batching.max_batch_size or 1
    batches = sorted({b for b in (1, 4, 8, 16, 32, 64, 128) if b <= max_batch} | {max_batch})
    layouts = sorted({(cores, 1), (1, cores), (1, 1)}, reverse=True)
    points: list[LimitPoint] = []
    for batch in batches:
        texts = (sentences * (batch // len(sentences) + 1))[:batch]
        prepared = pipeline.prepare({text_input: np.array([t.encode() for t in texts], dtype=object)})
        feeds = pipeline.collate([prepared])
        for sessions, threads in layouts:
            rate = measure_limit_point(entry.onnx_path, device, feeds, sessions, threads, seconds)
            points.append(LimitPoint(sessions, threads, batch, rate))
            print(f"  limit: {sessions} session(s) x {threads} thread(s), batch {batch:3d}: "
                  f"{rate:8.1f} sentences/s", file=sys.stderr)
    best = max(points, key=lambda p: p.sentences_per_s)
    return {
        "what": "in-process ONNX Runtime throughput of the MiniLM graph on pre-tokenised 32-token "
                "sentences; sessions run concurrently in threads",
        "seconds_per_point": seconds,
        "points": [asdict(p) for p in points],
        "best": asdict(best),
        "sentences_per_s": best.sentences_per_s,
    }


# ------------------------------------------------------------------------- load generator
@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    client_cpu_s: float
    server_cpu_s: float | None
    error_samples: list[str]


class _Connection(asyncio.Protocol):
    """One keep-alive client: sends a request, waits for the whole response, sends the next."""

    def __init__(self, requests: list[bytes], offset: int, state: _LoadState) -> None:
        self.requests = requests
        self.index = offset
        self.state = state
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.state.stop_at:
            assert self.transport is not None
            self.transport.close()
            return
        request = self.requests[self.index % len(self.requests)]
        self.index += 1
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
            if at < 0:
                self.state.fail(f"response without content-length: {head[:200]!r}")
                assert self.transport is not None
                self.transport.close()
                return
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end > 0 else None])
            self.need = end + 4 + length
        if len(self.buffer) < self.need:
            return
        done = time.perf_counter()
        if self.status != 200:
            self.state.fail(f"HTTP {self.status}: {bytes(self.buffer[self.need - 300 : self.need])!r}")
        self.state.record(self.sent_at, done, ok=self.status == 200)
        del self.buffer[: self.need]
        self.need = None
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _LoadState:
    def __init__(self, measure_from: float, stop_at: float) -> None:
        self.measure_from = measure_from
        self.stop_at = stop_at
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []

    def record(self, sent: float, done: float, *, ok: bool) -> None:
        if sent < self.measure_from or done > self.stop_at:
            return
        if ok:
            self.latencies.append(done - sent)
        else:
            self.errors += 1

    def fail(self, why: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


async def run_load(port: int, requests: list[bytes], concurrency: int, warmup_s: float, seconds: float,
                   server: psutil.Process | None) -> LoadResult:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    state = _LoadState(start + warmup_s, start + warmup_s + seconds)
    connections = []
    for i in range(concurrency):
        _, protocol = await loop.create_connection(
            lambda i=i: _Connection(requests, i * 7, state), "127.0.0.1", port)
        connections.append(protocol)
    await asyncio.sleep(max(0.0, state.measure_from - time.perf_counter()))
    client_cpu0 = time.process_time()
    server_cpu0 = _cpu_seconds(server)
    await asyncio.sleep(max(0.0, state.stop_at - time.perf_counter()))
    client_cpu = time.process_time() - client_cpu0
    server_cpu1 = _cpu_seconds(server)
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections)), timeout=60)
    lat = np.array(state.latencies) * 1e3
    done = len(state.latencies)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if done else None

    return LoadResult(
        concurrency=concurrency, seconds=seconds, requests=done, errors=state.errors,
        requests_per_s=round(done / seconds, 1),
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        mean_ms=round(float(lat.mean()), 3) if done else None,
        client_cpu_s=round(client_cpu, 2),
        server_cpu_s=None if server_cpu is None else round(server_cpu, 2),
        error_samples=state.error_samples,
    )


def _cpu_seconds(process: psutil.Process | None) -> float | None:
    """CPU time of the server and its worker processes together."""
    if process is None:
        return None
    total = 0.0
    try:
        for p in [process, *process.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return None
    return total


def http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ----------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log_path: Path, replicas: int | None) -> subprocess.Popen:
    kcloud = Path(sys.executable).with_name("kcloud")
    command = [str(kcloud), "up", "--port", str(port)]
    if replicas:
        command += ["--replicas", str(replicas)]
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kcloud up exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"kcloud up was not ready within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per load phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up before each load phase")
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="time per in-process limit point")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=None, help="passed to kcloud up (default: layout)")
    parser.add_argument("--json-too", action="store_true", help="also measure MiniLM with JSON tensors")
    args = parser.parse_args()

    from tokenizers import Tokenizer

    from kcloud.farm.inventory import Inventory
    from kcloud.runtime.layout import host_cores
    from kcloud.serving.oip import encode_infer_request
    from kcloud.serving.server import local_cpu, prepare_repository

    repository = prepare_repository()
    entry = repository.get(MINILM)
    device = local_cpu(Inventory.build((), include_local=True))
    cores = host_cores()
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 256, TOKENS_PER_SENTENCE)

    print("(a) in-process limit", file=sys.stderr)
    limit = measure_limit(entry, device, sentences, args.limit_seconds, cores)

    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-bench-serving-{port}.log"
    print(f"(b, c) starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    server = start_server(port, log_path, args.replicas)
    try:
        wait_ready(port, server, 300, log_path)
        server_ps = psutil.Process(server.pid)
        text_input = entry.config.inputs[0].name

        def minilm_requests(binary: bool) -> list[bytes]:
            out = []
            for sentence in sentences:
                body, headers = encode_infer_request(
                    {text_input: np.array([sentence.encode()], dtype=object)},
                    binary=binary, binary_outputs=binary)
                out.append(http_request(port, f"/v2/models/{MINILM}/infer", body, headers))
            return out

        noop_entry = repository.get(NOOP)
        noop_spec = noop_entry.config.inputs[0]
        shape = [1 if d == -1 else d for d in noop_spec.shape]
        noop_body, noop_headers = encode_infer_request(
            {noop_spec.name: np.arange(np.prod(shape), dtype=np.float32).reshape(shape)},
            binary=True, binary_outputs=True)
        noop_requests = [http_request(port, f"/v2/models/{NOOP}/infer", noop_body, noop_headers)]

        async def phases() -> dict:
            results: dict = {}
            print(f"(b) served MiniLM, binary, concurrency {args.concurrency}", file=sys.stderr)
            results["served_binary"] = await run_load(port, minilm_requests(True), args.concurrency,
                                                      args.warmup, args.seconds, server_ps)
            if args.json_too:
                print(f"(b') served MiniLM, JSON, concurrency {args.concurrency}", file=sys.stderr)
                results["served_json"] = await run_load(port, minilm_requests(False), args.concurrency,
                                                        args.warmup, args.seconds, server_ps)
            for concurrency in (1, args.concurrency):
                print(f"(c) noop, concurrency {concurrency}", file=sys.stderr)
                results[f"noop_c{concurrency}"] = await run_load(
                    port, noop_requests, concurrency, args.warmup, args.seconds, server_ps)
            return results

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            loads = runner.run(phases())
    finally:
        stop_server(server)

    served = loads["served_binary"]
    ratio = served.requests_per_s / limit["sentences_per_s"] if limit["sentences_per_s"] else None
    result = {
        "benchmark": "serving_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": cores, "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "model": {"name": entry.name, "version": entry.version, "sha256": entry.sha256},
        "workload": {
            "tokens_per_sentence": TOKENS_PER_SENTENCE, "distinct_sentences": len(sentences),
            "sentences_per_request": 1, "concurrency": args.concurrency,
            "protocol": "OIP v2 REST, binary tensor data in and out, HTTP/1.1 keep-alive",
            "warmup_s": args.warmup, "measured_s": args.seconds,
            "server": f"kcloud up{' --replicas ' + str(args.replicas) if args.replicas else ''}"
                      " (subprocess, uvicorn + uvloop + httptools)",
            "client": "asyncio/uvloop HTTP/1.1 client over pre-encoded requests, same machine",
        },
        "limit": limit,
        "served": asdict(served),
        "ratio_served_to_limit": None if ratio is None else round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
        "gateway_overhead_noop": {
            "c1": asdict(loads["noop_c1"]),
            f"c{args.concurrency}": asdict(loads[f"noop_c{args.concurrency}"]),
        },
    }
    if "served_json" in loads:
        result["served_json"] = asdict(loads["served_json"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("KCLOUD_LOG_LEVEL", "WARNING")
    main()
