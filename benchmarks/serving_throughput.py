"""Served throughput vs the in-process ONNX Runtime limit, and the gateway's own overhead.

One run, on this machine, measures three things (issue 3, "Speed"):

(a) limit: the best batched throughput of all-MiniLM-L6-v2 in this process, on 32-token
    sentences. A brief sweep over batch sizes and the session layouts the runtime supports
    (`sessions x threads`, each session looping `session.run` in its own thread; ONNX Runtime
    releases the GIL) picks the batch size; tokenisation is done up front, so this is the
    graph's limit alone. The same model through its own pipeline (tokenise, collate, run,
    split) is measured too.
(b) served: the real gateway (`kcloud up` in a subprocess, with its own kcloud home and an
    admin API key, as a user runs it), 64 concurrent keep-alive clients, each sending one
    32-token sentence per request over OIP v2 with binary tensors in and out; throughput
    (responses completed in the measured window, cross-checked against the rows the server
    computed in it), p50/p99 latency, and the ratio served / limit (target >= 0.85).
(c) overhead: the same gateway and client with the `noop` model (identity on FP32 [1, 16]) at
    concurrency 1 and 64: HTTP + auth + codec + router + batcher + worker IPC alone.

The machine is shared with other work, so (a) and (b) alternate in rounds, each round's ratio
comparing phases a few seconds apart; the JSON gives the median over all rounds, the median
over quiet rounds (other processes under 5 % of the CPU in both phases), a CPU-normalised
ratio, and every round's figures with the CPU each party used. Each round measures the limit
in the all-core layouts at the sweep's two best batch sizes; the limit is the point with the
best median over the rounds, and the stricter ratio against the fastest point of each round is
given too.

The load generator is a lean asyncio (uvloop) HTTP/1.1 client over pre-encoded requests: one
`transport.write` per request and a minimal response parse, so it takes little CPU from the
server on a 2-core machine; its own CPU time is reported next to the server's. Everything binds
and connects to 127.0.0.1 only; every phase is bounded in time.

Writes benchmarks/results/serving_throughput.json and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


def measure_limit_point(weights_path: Path, device, feeds: dict[str, np.ndarray], sessions: int,
                        threads: int, seconds: float, busy: list[float] | None = None,
                        pipeline=None, inputs: dict[str, np.ndarray] | None = None) -> float:
    """Sentences per second; `busy`, if given, receives [our CPU s, other processes' CPU s].

    With `pipeline` and `inputs`, every iteration goes through the model's own pipeline
    (tokenise, collate, run, split) instead of running pre-made feeds.
    """
    from kcloud.runtimes.session import create_session

    made = [create_session(weights_path, device, threads=threads) for _ in range(sessions)]
    names = [o.name for o in made[0].get_outputs()]

    def step(session) -> None:
        if pipeline is None:
            session.run(names, feeds)
            return
        prepared = [pipeline.prepare(inputs)]
        values = session.run(names, pipeline.collate(prepared))
        pipeline.split(dict(zip(names, values, strict=True)), prepared)

    for session in made:  # warm-up: first run allocates arenas
        step(session)
    rows = next(iter(feeds.values())).shape[0]
    counts = [0] * sessions
    start_line = threading.Barrier(sessions + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        session = made[index]
        start_line.wait()
        while time.perf_counter() < stop_at[0]:
            step(session)
            counts[index] += rows

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    ours0, machine0 = time.process_time(), machine_busy_seconds()
    stop_at[0] = began + seconds
    start_line.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if busy is not None:
        ours = time.process_time() - ours0
        busy[:] = [ours, max(0.0, machine_busy_seconds() - machine0 - ours)]
    return sum(counts) / elapsed


def limit_feeds(entry, sentences: list[str], batch: int) -> dict[str, np.ndarray]:
    """The graph's feeds for `batch` sentences, tokenised by the model's own pipeline."""
    from kcloud.models.pipelines import pipeline_for

    pipeline = pipeline_for(entry)
    texts = (sentences * (batch // len(sentences) + 1))[:batch]
    text = np.array([t.encode() for t in texts], dtype=object)
    prepared = pipeline.prepare({entry.config.inputs[0].name: text})
    return pipeline.collate([prepared])


def sweep_limit(entry, device, sentences: list[str], seconds: float, cores: int) -> list[LimitPoint]:
    """Every batch size x session layout, briefly, to find the best one."""
    max_batch = entry.config.batching.max_batch_size or 1
    batches = sorted({b for b in (1, 8, 16, 32, 64, 128) if b <= max_batch} | {max_batch})
    layouts = sorted({(cores, 1), (1, cores), (1, 1)}, reverse=True)
    points: list[LimitPoint] = []
    for batch in batches:
        feeds = limit_feeds(entry, sentences, batch)
        for sessions, threads in layouts:
            rate = measure_limit_point(entry.weights_path, device, feeds, sessions, threads, seconds)
            points.append(LimitPoint(sessions, threads, batch, round(rate, 1)))
            print(f"  sweep: {sessions} session(s) x {threads} thread(s), batch {batch:3d}: "
                  f"{rate:8.1f} sentences/s", file=sys.stderr)
    return points


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
    gateway_cpu_s: float | None
    other_cpu_s: float | None
    server_rows_per_s: float | None
    server_mean_batch_rows: float | None
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
        """Count a response when it completes inside the measured window.

        Throughput is completions per second in the window. Requests still in flight when the
        window opens complete inside it and are counted: leaving them out (counting only those
        also *sent* inside) would understate throughput by latency / window, about 5 % with 64
        clients at 250 ms in a 5 s phase. Their latency is a sample of the same steady state.
        """
        if not self.measure_from <= done <= self.stop_at:
            return
        if ok:
            self.latencies.append(done - sent)
        else:
            self.errors += 1

    def fail(self, why: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


async def run_load(port: int, requests: list[bytes], concurrency: int, warmup_s: float, seconds: float,
                   server: psutil.Process | None,
                   server_rows: Callable[[], tuple[float, float]] | None = None) -> LoadResult:
    """`concurrency` clients for `warmup_s` + `seconds`; figures from the last `seconds`.

    `server_rows`, if given, reads (rows, batches) the server has computed so far: its count of
    rows over the window is a cross-check of the client's, from the other end, and with the
    batches it gives the mean batch the server ran in the same window.
    """
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
    gateway_cpu0 = _cpu_seconds(server, children=False)
    busy0 = machine_busy_seconds()
    counts0 = None if server_rows is None else await loop.run_in_executor(None, server_rows)
    await asyncio.sleep(max(0.0, state.stop_at - time.perf_counter()))
    client_cpu = time.process_time() - client_cpu0
    server_cpu1 = _cpu_seconds(server)
    gateway_cpu1 = _cpu_seconds(server, children=False)
    busy = machine_busy_seconds() - busy0
    counts1 = None if server_rows is None else await loop.run_in_executor(None, server_rows)
    rows, batches = (None, None) if counts0 is None or counts1 is None else (
        counts1[0] - counts0[0], counts1[1] - counts0[1])
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections)), timeout=60)
    lat = np.array(state.latencies) * 1e3
    done = len(state.latencies)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if done else None

    result = LoadResult(
        concurrency=concurrency, seconds=seconds, requests=done, errors=state.errors,
        requests_per_s=round(done / seconds, 1),
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        mean_ms=round(float(lat.mean()), 3) if done else None,
        client_cpu_s=round(client_cpu, 2),
        server_cpu_s=None if server_cpu is None else round(server_cpu, 2),
        gateway_cpu_s=None if gateway_cpu0 is None or gateway_cpu1 is None
        else round(gateway_cpu1 - gateway_cpu0, 2),
        other_cpu_s=None if server_cpu is None else round(max(0.0, busy - server_cpu - client_cpu), 2),
        server_rows_per_s=None if rows is None else round(rows / seconds, 1),
        server_mean_batch_rows=round(rows / batches, 1) if rows is not None and batches else None,
        error_samples=state.error_samples,
    )
    result.latencies_ms = lat  # type: ignore[attr-defined]  # raw, for merging rounds; not in the JSON
    return result


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine spent busy so far (every core summed)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _cpu_seconds(process: psutil.Process | None, *, children: bool = True) -> float | None:
    """CPU time of the server and (with `children`) its worker processes together."""
    if process is None:
        return None
    total = 0.0
    try:
        for p in [process, *(process.children(recursive=True) if children else [])]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return None
    return total


def batch_rows_so_far(port: int, model: str, headers: dict[str, str]) -> tuple[float, float]:
    """(sum of rows, number of batches) the server has run for `model`, from its /metrics."""
    import httpx

    total = count = 0.0
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, headers=headers).text
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("kcloud_batch_rows_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("kcloud_batch_rows_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


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


KCLOUD = Path(sys.executable).with_name("kcloud")


def server_home(repository_root: Path) -> Path:
    """A fresh kcloud home for the server (its own database and keys) sharing the built models."""
    home = Path(tempfile.mkdtemp(prefix="kcloud-bench-home-"))
    (home / "models").symlink_to(repository_root.resolve(), target_is_directory=True)
    return home


def admin_key(home: Path) -> str:
    """An API key, made as an operator would (`kcloud keys create-admin`): `kcloud up` checks keys."""
    done = subprocess.run([str(KCLOUD), "keys", "create-admin", "--name", "serving-benchmark"],
                          capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "KCLOUD_HOME": str(home)})
    match = re.search(r"\bkc_\w+", done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"no key in the output of kcloud keys create-admin:\n{done.stdout}{done.stderr}")
    return match.group(0)


def start_server(port: int, log_path: Path, home: Path, replicas: int | None, isolation: str,
                 auth: bool, server: str = "up") -> subprocess.Popen:
    # The two models measured, and not the chat model: its engine would hold threads on the cores
    # the limit and the served throughput are measured on.
    models = ["--model", MINILM, "--model", NOOP]
    if server == "cluster":  # the head of a one-node Ray cluster: replicas are Ray actors
        command = [str(KCLOUD), "cluster", "start", "--port", str(port), "--ray-port", str(free_port()),
                   *models]
    else:
        command = [str(KCLOUD), "up", "--port", str(port), "--isolation", isolation, *models]
    if replicas:
        command += ["--replicas", str(replicas)]
    if not auth:
        command.append("--insecure-no-auth")
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "KCLOUD_HOME": str(home)})


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
#: A phase is "quiet" when processes outside the benchmark used at most this share of the machine.
QUIET_SHARE = 0.05
#: How many of the sweep's best batch sizes every round measures the limit at.
LIMIT_BATCHES = 2


def _quiet(other_cpu_s: float | None, seconds: float, cores: int) -> bool:
    return other_cpu_s is not None and other_cpu_s <= QUIET_SHARE * seconds * cores


def _cpu_ratio(served: LoadResult, limit_sentences: float, limit_cpu_s: float) -> float | None:
    """Sentences per CPU-second served (server + client) over the same for the limit.

    On a shared machine the other tenants' load moves both throughputs; per CPU-second the
    comparison shows what the serving path itself costs.
    """
    if not served.server_cpu_s or not limit_cpu_s or not limit_sentences:
        return None
    served_per_cpu = served.requests / (served.server_cpu_s + served.client_cpu_s)
    return round(served_per_cpu / (limit_sentences / limit_cpu_s), 3)


def _point_key(point: dict) -> tuple[int, int, int]:
    return point["sessions"], point["threads"], point["batch"]


def _judge_rounds(rounds: list[dict], served: list[LoadResult], limit_seconds: float, seconds: float,
                  cores: int) -> tuple[int, int, int]:
    """Choose the limit point, (sessions, threads, batch) with the best median over the rounds,
    and fill each round's limit and ratios.

    Taking the fastest point in each round instead would pick, each time, whichever point the
    machine's noise favoured: the maximum of several noisy measurements overstates them all.
    """
    by_point: dict[tuple[int, int, int], list[float]] = {}
    for entry in rounds:
        for point in entry["limit_points"]:
            by_point.setdefault(_point_key(point), []).append(point["sentences_per_s"])
    layout = max(by_point, key=lambda key: float(np.median(by_point[key])))
    for entry, load in zip(rounds, served, strict=True):
        point = next(p for p in entry["limit_points"] if _point_key(p) == layout)
        limit = point["sentences_per_s"]
        entry["limit_sentences_per_s"] = limit
        entry["ratio"] = round(load.requests_per_s / limit, 3) if limit else None
        entry["cpu_normalised_ratio"] = _cpu_ratio(load, limit * limit_seconds, point["cpu_s"])
        entry["quiet"] = _quiet(point["other_cpu_s"], limit_seconds, cores) and _quiet(
            load.other_cpu_s, seconds, cores)
    return layout


def _merged_latency(results: list[LoadResult]) -> dict:
    lat = np.concatenate([r.latencies_ms for r in results])  # type: ignore[attr-defined]
    return {
        "requests": int(sum(r.requests for r in results)),
        "errors": int(sum(r.errors for r in results)),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per load phase")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="time per limit point in a round")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each load phase")
    parser.add_argument("--sweep-seconds", type=float, default=1.0, help="time per limit sweep point")
    parser.add_argument("--rounds", type=int, default=8,
                        help="limit/served pairs, interleaved so that both see the same machine load")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=None, help="passed to kcloud up (default: layout)")
    parser.add_argument("--isolation", choices=["process", "thread"], default="process",
                        help="passed to kcloud up: replicas in worker processes (default) or threads")
    parser.add_argument("--auth", choices=["admin-key", "none"], default="admin-key",
                        help="send an API key, as `kcloud up` requires (default), or run the server "
                             "with --insecure-no-auth")
    parser.add_argument("--server", choices=["up", "cluster"], default="up",
                        help="serve with `kcloud up` (local executor) or `kcloud cluster start` "
                             "(Ray executor)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--json-too", action="store_true", help="also measure MiniLM with JSON tensors")
    args = parser.parse_args()

    from tokenizers import Tokenizer

    from kcloud.app.stack import local_cpu, prepare_repository
    from kcloud.devices.inventory import Inventory
    from kcloud.runtimes.layout import host_cores
    from kcloud.serving.oip import encode_infer_request

    load_before = os.getloadavg()
    repository = prepare_repository(progress=False)
    entry = repository.get(MINILM)
    device = local_cpu(Inventory.build((), include_local=True))
    cores = host_cores()
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 256, TOKENS_PER_SENTENCE)

    print("(a) in-process limit: sweep", file=sys.stderr)
    sweep = sweep_limit(entry, device, sentences, args.sweep_seconds, cores)
    best = max(sweep, key=lambda p: p.sentences_per_s)
    # The sweep is brief and the machine shared: a 1 s point can miss the best batch size by
    # noise, and a limit measured at the wrong batch would flatter the ratio. Every round
    # re-measures the best point's layout and the all-core layouts at the sweep's two best batch
    # sizes; the point with the best median over the rounds is the limit (`_judge_rounds`).
    by_batch = sorted({p.batch for p in sweep}, key=lambda b: -max(p.sentences_per_s for p in sweep
                                                                   if p.batch == b))
    layouts = list(dict.fromkeys([(best.sessions, best.threads), (cores, 1), (1, cores)]))
    candidates = [(s, t, b) for b in by_batch[:LIMIT_BATCHES] for s, t in layouts]
    feeds_of = {b: limit_feeds(entry, sentences, b) for b in by_batch[:LIMIT_BATCHES]}
    from kcloud.models.pipelines import pipeline_for

    limit_pipeline = pipeline_for(entry)

    def pipeline_inputs(batch: int) -> dict[str, np.ndarray]:
        texts = (sentences * (batch // len(sentences) + 1))[:batch]
        return {entry.config.inputs[0].name: np.array([t.encode() for t in texts], dtype=object)}

    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-bench-serving-{port}.log"
    print(f"(b, c) starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    home = server_home(repository.root)
    auth_headers = {"Authorization": f"Bearer {admin_key(home)}"} if args.auth == "admin-key" else {}
    server = start_server(port, log_path, home, args.replicas, args.isolation, auth=args.auth == "admin-key",
                          server=args.server)
    rounds: list[dict] = []
    served_results: list[LoadResult] = []
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
                path = f"/v2/models/{MINILM}/infer"
                out.append(http_request(port, path, body, {**headers, **auth_headers}))
            return out

        noop_spec = repository.get(NOOP).config.inputs[0]
        shape = [1 if d == -1 else d for d in noop_spec.shape]
        noop_body, noop_headers = encode_infer_request(
            {noop_spec.name: np.arange(np.prod(shape), dtype=np.float32).reshape(shape)},
            binary=True, binary_outputs=True)
        noop_requests = [http_request(port, f"/v2/models/{NOOP}/infer", noop_body,
                                      {**noop_headers, **auth_headers})]
        binary_requests = minilm_requests(True)
        loads: dict[str, LoadResult] = {}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for index in range(args.rounds):
                measured = []
                for sessions, threads, batch in candidates:
                    busy: list[float] = []
                    rate = measure_limit_point(entry.weights_path, device, feeds_of[batch], sessions, threads,
                                               args.limit_seconds, busy)
                    measured.append({"sessions": sessions, "threads": threads, "batch": batch,
                                     "sentences_per_s": round(rate, 1), "cpu_s": round(busy[0], 2),
                                     "other_cpu_s": round(busy[1], 2)})
                top = max(measured, key=lambda m: m["sentences_per_s"])
                limit_rate = top["sentences_per_s"]
                pipeline_rate = measure_limit_point(entry.weights_path, device, feeds_of[top["batch"]],
                                                    top["sessions"], top["threads"], args.limit_seconds,
                                                    None, pipeline=limit_pipeline,
                                                    inputs=pipeline_inputs(top["batch"]))
                print(f"(a) round {index + 1}: limit {limit_rate:.1f} sentences/s "
                      f"({top['sessions']}x{top['threads']}, batch {top['batch']})", file=sys.stderr)
                served = runner.run(run_load(
                    port, binary_requests, args.concurrency, args.warmup, args.seconds, server_ps,
                    server_rows=lambda: batch_rows_so_far(port, MINILM, auth_headers)))
                print(f"(b) round {index + 1}: served {served.requests_per_s:.1f} requests/s, "
                      f"p99 {served.p99_ms} ms", file=sys.stderr)
                served_results.append(served)
                rounds.append({
                    "round_max_limit_sentences_per_s": limit_rate,
                    "limit_points": measured,
                    "limit_with_tokenizer_sentences_per_s": round(pipeline_rate, 1),
                    "ratio_to_limit_with_tokenizer": round(served.requests_per_s / pipeline_rate, 3)
                    if pipeline_rate else None,
                    "served": asdict(served),
                    "ratio_to_round_max": round(served.requests_per_s / limit_rate, 3)
                    if limit_rate else None,
                })
            if args.json_too:
                print(f"(b') served MiniLM, JSON tensors, concurrency {args.concurrency}", file=sys.stderr)
                loads["served_json"] = runner.run(run_load(port, minilm_requests(False), args.concurrency,
                                                           args.warmup, args.seconds, server_ps))
            for concurrency in (1, args.concurrency):
                print(f"(c) noop, concurrency {concurrency}", file=sys.stderr)
                loads[f"noop_c{concurrency}"] = runner.run(run_load(
                    port, noop_requests, concurrency, args.warmup, args.seconds, server_ps))
    finally:
        stop_server(server)
        shutil.rmtree(home, ignore_errors=True)

    limit_layout = _judge_rounds(rounds, served_results, args.limit_seconds, args.seconds, cores)
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    round_max_ratios = [r["ratio_to_round_max"] for r in rounds if r["ratio_to_round_max"] is not None]
    quiet_ratios = [r["ratio"] for r in rounds if r["ratio"] is not None and r["quiet"]]
    tokenizer_ratios = [r["ratio_to_limit_with_tokenizer"] for r in rounds
                        if r["ratio_to_limit_with_tokenizer"] is not None]
    cpu_ratios = [r["cpu_normalised_ratio"] for r in rounds if r["cpu_normalised_ratio"] is not None]
    limit_rates = [r["limit_sentences_per_s"] for r in rounds]
    served_rates = [r["served"]["requests_per_s"] for r in rounds]
    server_rates = [r["served"]["server_rows_per_s"] for r in rounds if r["served"]["server_rows_per_s"]]
    ratio = float(np.median(ratios)) if ratios else None
    result = {
        "benchmark": "serving_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": cores, "cpu": device.name, "python": platform.python_version(),
            "onnxruntime": ort.__version__, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other_cpu_s is CPU that processes outside this benchmark used "
                    "during a phase (all cores summed); limit and served phases alternate so both see it",
        },
        "model": {"name": entry.name, "version": entry.version, "sha256": entry.sha256},
        "workload": {
            "tokens_per_sentence": TOKENS_PER_SENTENCE, "distinct_sentences": len(sentences),
            "sentences_per_request": 1, "concurrency": args.concurrency,
            "protocol": "OIP v2 REST, binary tensor data in and out, HTTP/1.1 keep-alive",
            "auth": "Authorization: Bearer <admin key> on every request" if args.auth == "admin-key"
            else "none (kcloud up --insecure-no-auth)",
            "warmup_s": args.warmup, "measured_s_per_phase": args.seconds, "rounds": args.rounds,
            "server": ("kcloud cluster start (RayExecutor: replicas are Ray actors on the head's node)"
                       if args.server == "cluster" else f"kcloud up --isolation {args.isolation}")
                      + (f" --replicas {args.replicas}" if args.replicas else "")
                      + " (subprocess; uvicorn + uvloop + httptools)",
            "client": "asyncio/uvloop HTTP/1.1 keep-alive client over pre-encoded requests, same machine",
        },
        "limit": {
            "what": "in-process ONNX Runtime throughput of the MiniLM graph on pre-tokenised 32-token "
                    "sentences; `sessions` sessions run concurrently in threads",
            "sweep_seconds_per_point": args.sweep_seconds,
            "round_seconds_per_point": args.limit_seconds,
            "sweep": [asdict(p) for p in sweep],
            "best": asdict(best),
            "layout": {"sessions": limit_layout[0], "threads": limit_layout[1], "batch": limit_layout[2]},
            "layout_is": "the point (sessions x threads, at one of the sweep's two best batch sizes) "
                         "with the highest median throughput over the rounds; each round's limit is its "
                         "measurement there",
            "sentences_per_s_median": float(np.median(limit_rates)),
        },
        "served": {
            "requests_per_s_median": float(np.median(served_rates)),
            "server_rows_per_s_median": float(np.median(server_rates)) if server_rates else None,
            "server_rows_per_s_is": "the same phases counted at the server: rows its replicas computed "
                                    "in the window (kcloud_batch_rows_sum in /metrics), a cross-check",
            **_merged_latency(served_results),
            "p50_ms_by_round": [r.p50_ms for r in served_results],
            "p99_ms_by_round": [r.p99_ms for r in served_results],
        },
        "rounds": rounds,
        "ratio_served_to_limit": None if ratio is None else round(ratio, 3),
        "ratio_is": "median over all rounds of served req/s / limit sentences/s measured just before",
        "ratio_to_round_max": round(float(np.median(round_max_ratios)), 3) if round_max_ratios else None,
        "ratio_to_round_max_is": "the same median against the fastest of the points measured in each round: "
                                 "a stricter figure, as the largest of several noisy measurements of "
                                 "similar points is biased upwards",
        "quiet_rounds": len(quiet_ratios),
        "ratio_quiet_rounds": round(float(np.median(quiet_ratios)), 3) if quiet_ratios else None,
        "ratio_quiet_rounds_is": f"the same median over the rounds in which processes outside the benchmark "
                                 f"used at most {QUIET_SHARE:.0%} of the machine in both phases",
        "ratio_to_limit_with_tokenizer": round(float(np.median(tokenizer_ratios)), 3)
        if tokenizer_ratios else None,
        "ratio_to_limit_with_tokenizer_is": "the same median, against the model measured in-process through "
                                            "its own pipeline (tokenise, collate, run, split) in the best "
                                            "layout of the round",
        "cpu_normalised_ratio": round(float(np.median(cpu_ratios)), 3) if cpu_ratios else None,
        "cpu_normalised_ratio_is": "median over rounds of (served requests per CPU-second of server and "
                                   "client) / (limit sentences per CPU-second)",
        "target_ratio": TARGET_RATIO,
        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
        "meets_target_quiet_rounds": None if not quiet_ratios
        else float(np.median(quiet_ratios)) >= TARGET_RATIO,
        "gateway_overhead_noop": {
            "c1": asdict(loads["noop_c1"]),
            f"c{args.concurrency}": asdict(loads[f"noop_c{args.concurrency}"]),
        },
    }
    if "served_json" in loads:
        result["served_json"] = asdict(loads["served_json"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("KCLOUD_LOG_LEVEL", "WARNING")
    main()
