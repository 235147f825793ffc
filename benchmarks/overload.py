"""Overload: what admission and refusals cost the requests that are admitted, and what one huge
text costs everyone else (issue 13's "Done when").

One run of `kcloud up` (a subprocess with its own kcloud home and SQLite database, as a user runs
it) measures:

(a) admission at 256 clients on MiniLM (`all-MiniLM-L6-v2`, one 32-token sentence per request,
    OIP binary tensors): admitted throughput, admitted p50/p99 and the share of 429s, with the
    tenant uncapped and with its `max_concurrency` at 32. The clients honour Retry-After.
(b) refusals beside admitted work: 32 well-behaved clients of tenant `calm` (its own MiniLM
    deployment, uncapped) alone; beside 32 well-behaved clients of tenant `flood` (capped at 32
    concurrent, its own MiniLM deployment: exactly its cap, no refusals); and beside 256 clients
    of `flood` that ignore Retry-After (32 admitted, the rest refused over and over). The drop
    from the second to the third phase is what refusing costs the admitted requests.
(c) gateway stall: the longest `GET /v2/health/live` while one 15 MiB text is sent to MiniLM as a
    binary OIP BYTES element and as `input` on `/v1/embeddings`, the big request's status and time,
    and the gateway's RSS before, at its peak and after.
(d) key refusal time: the mean time to refuse a key with an unknown prefix (a new one each time,
    as a guesser sends) and a key with an existing prefix and a wrong secret, alternated.

The flooding clients run in a process of their own (this script with `--role flood`), so that the
measured clients' latencies are not their loop's. Every client is a lean asyncio (uvloop) HTTP/1.1
keep-alive client over pre-encoded requests that reconnects when the server closes. Everything
binds and connects to 127.0.0.1 only; every phase is bounded in time.

Writes benchmarks/results/overload.json and prints it. The default run takes about 2.5 minutes on
2 cores; `--seconds`, `--warmup`, `--rounds`, `--sections` and `--auth-probes` make shorter ones
(e.g. `--sections b --rounds 1 --seconds 4`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serving_throughput import (  # noqa: E402  (a sibling script, not a package)
    MINILM,
    TOKENS_PER_SENTENCE,
    admin_key,
    free_port,
    http_request,
    machine_busy_seconds,
    sentences_of_exactly,
    server_home,
    wait_ready,
)

RESULTS = HERE / "results" / "overload.json"
CAP = 32
MANY = 256
FEW = 32
BIG_TEXT_BYTES = 15 * 1024 * 1024
#: How often the health probe asks while the big text is on its way.
PROBE_EVERY_S = 0.01


# ------------------------------------------------------------------------------ the client
@dataclass
class Tally:
    """What a group of clients saw inside the measured window [measure_from, stop_at]."""

    measure_from: float
    stop_at: float
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    reconnects: int = 0
    #: Completion time of every response, in or out of the window (for usage_durability.py).
    acks: list[float] | None = None

    def record(self, sent: float, done: float, status: int) -> None:
        if self.acks is not None:
            self.acks.append(done)
        if not self.measure_from <= done <= self.stop_at:
            return
        self.statuses[status] += 1
        if status == 200:
            self.latencies.append(done - sent)

    def summary(self) -> dict:
        seconds = self.stop_at - self.measure_from
        lat = np.array(self.latencies) * 1e3
        answered = sum(self.statuses.values())
        refused = self.statuses.get(429, 0)

        def pct(q: float) -> float | None:
            return round(float(np.percentile(lat, q)), 2) if lat.size else None

        return {
            "seconds": round(seconds, 2),
            "admitted_per_s": round(self.statuses.get(200, 0) / seconds, 1),
            "refused_per_s": round(refused / seconds, 1),
            "share_429": round(refused / answered, 4) if answered else None,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "reconnects": self.reconnects,
        }


class _Client(asyncio.Protocol):
    """One keep-alive connection: a request, its whole response, the next request.

    After a 429 it waits out Retry-After (`honour`) or asks again at once. It ends when the
    server closes the connection (its owner reconnects) or at `stop_at`."""

    def __init__(self, requests: list[bytes], offset: int, tally: Tally, honour: bool) -> None:
        self.requests = requests
        self.index = offset
        self.tally = tally
        self.honour = honour
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.retry_after = 0.0
        self.closing = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if time.perf_counter() >= self.tally.stop_at:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.requests[self.index % len(self.requests)])
        self.index += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                self.status = int(head[9:12])
                self.need = end + 4 + _header_int(head, b"\r\ncontent-length:", 0)
                self.retry_after = _header_int(head, b"\r\nretry-after:", 1)
                self.closing = b"\r\nconnection: close" in head
            if len(self.buffer) < self.need:
                return
            self.tally.record(self.sent_at, time.perf_counter(), self.status)
            del self.buffer[: self.need]
            self.need = None
            if self.closing:
                assert self.transport is not None
                self.transport.close()
                return
            if self.status == 429 and self.honour:
                asyncio.get_running_loop().call_later(self.retry_after, self._send)
            else:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _header_int(head: bytes, name: bytes, default: int) -> int:
    at = head.find(name)
    if at < 0:
        return default
    end = head.find(b"\r\n", at + 2)
    return int(head[at + len(name): end if end > 0 else None].strip() or default)


async def drive(port: int, requests: list[bytes], clients: int, warmup_s: float, seconds: float, *,
                honour: bool, tally: Tally | None = None, started: asyncio.Event | None = None) -> Tally:
    """`clients` connections for `warmup_s` + `seconds`; the tally covers the last `seconds`."""
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    tally = tally or Tally(now + warmup_s, now + warmup_s + seconds)

    async def one(index: int) -> None:
        first = True
        while time.perf_counter() < tally.stop_at:
            if not first:
                tally.reconnects += 1
            first = False
            try:
                _, client = await loop.create_connection(
                    lambda: _Client(requests, index * 7, tally, honour), "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # the server is gone or refusing: do not spin
                continue
            await client.closed

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    if started is not None:
        started.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=warmup_s + seconds + 120)
    return tally


# ---------------------------------------------------------------------------- the server
def start_up(port: int, home: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`kcloud up` on 127.0.0.1:`port`, one replica per bundled ONNX model, in its own process group.

    Not the chat model: its engine would hold threads on the cores the load is measured on."""
    command = [str(Path(sys.executable).with_name("kcloud")), "up", "--host", "127.0.0.1",
               "--port", str(port), "--replicas", "1", "--model", MINILM, "--model", "digits-cnn",
               "--model", "noop"]
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "KCLOUD_HOME": str(home), **(env or {})})


def stop_up(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class Api:
    """The admin API over httpx, failing loudly with the server's answer."""

    def __init__(self, port: int, key: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs):
        response = self.client.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response


def tenant_with_minilm(admin: Api, port: int, tenant: str) -> tuple[str, str]:
    """A tenant, a member key of it, and a MiniLM deployment it owns (ready to serve)."""
    admin.call("POST", "/api/v1/tenants", json={"name": tenant})
    key = admin.call("POST", "/api/v1/keys", json={"tenant": tenant, "name": "overload"}).json()["key"]
    member = Api(port, key)
    name = f"{tenant}-minilm"
    member.call("POST", "/api/v1/deployments", json={"model": MINILM, "name": name, "replicas": 1})
    deadline = time.monotonic() + 300
    while member.client.get(f"/v2/models/{name}/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployment {name} of {tenant} was not ready within 300 s")
        time.sleep(0.5)
    return key, name


def set_cap(admin: Api, tenant: str, cap: int | None) -> None:
    admin.call("PUT", f"/api/v1/tenants/{tenant}/quota", json={} if cap is None else {"max_concurrency": cap})


def minilm_requests(port: int, model: str, key: str, sentences: list[str]) -> list[bytes]:
    from kcloud.serving.oip import encode_infer_request

    out = []
    for sentence in sentences:
        body, headers = encode_infer_request({"text": np.array([sentence.encode()], dtype=object)},
                                             binary=True, binary_outputs=True)
        out.append(http_request(port, f"/v2/models/{model}/infer", body,
                                {**headers, "Authorization": f"Bearer {key}"}))
    return out


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of the gateway process alone (the event loop and its threads, not the replicas)."""
    times = process.cpu_times()
    return times.user + times.system


# ------------------------------------------------------------------------------ sections
def section_a(runner: asyncio.Runner, port: int, admin: Api, key: str, requests: list[bytes],
              args: argparse.Namespace) -> dict:
    out = {}
    for label, cap in (("uncapped", None), (f"capped_{CAP}", CAP)):
        set_cap(admin, "flood", cap)
        print(f"(a) {MANY} clients honouring Retry-After, tenant {label}", file=sys.stderr)
        tally = runner.run(drive(port, requests, MANY, args.warmup, args.seconds, honour=True))
        out[label] = tally.summary()
        print(f"    {out[label]}", file=sys.stderr)
    set_cap(admin, "flood", CAP)
    return out


def _flood_process(port: int, key: str, model: str, clients: int, honour: bool, warmup_s: float,
                   seconds: float, sentences_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", "flood", "--port", str(port), "--key", key, "--model", model,
         "--clients", str(clients), "--warmup", str(warmup_s), "--seconds", str(seconds),
         "--sentences", str(sentences_file), *(["--honour"] if honour else [])],
        stdout=subprocess.PIPE, text=True)


def _phase_b(runner: asyncio.Runner, port: int, calm_requests: list[bytes], flood: tuple[str, str],
             flood_load: tuple[int, bool] | None, sentences_file: Path, gateway: psutil.Process,
             args: argparse.Namespace) -> dict:
    flooder = None
    if flood_load is not None:
        clients, honour = flood_load
        # The flooder starts first (its own warm-up), and its window is the calm clients' window.
        flooder = _flood_process(port, flood[0], flood[1], clients, honour, 2 * args.warmup, args.seconds,
                                 sentences_file)
        assert flooder.stdout is not None
        assert flooder.stdout.readline().strip() == "STARTED"
        time.sleep(args.warmup)
    cpu0, busy0 = cpu_seconds(gateway), machine_busy_seconds()
    tally = runner.run(drive(port, calm_requests, FEW, args.warmup, args.seconds, honour=True))
    cpu1, busy1 = cpu_seconds(gateway), machine_busy_seconds()
    elapsed = args.warmup + args.seconds
    phase = {"calm": tally.summary(), "gateway_cpu_cores": round((cpu1 - cpu0) / elapsed, 3),
             "machine_busy_cores": round((busy1 - busy0) / elapsed, 2)}
    if flooder is not None:
        flood_out, _ = flooder.communicate(timeout=args.seconds * 3 + 180)
        phase["flood"] = json.loads(flood_out.strip().splitlines()[-1])
        phase["admitted_total_per_s"] = round(phase["calm"]["admitted_per_s"]
                                              + phase["flood"]["admitted_per_s"], 1)
    else:
        phase["admitted_total_per_s"] = phase["calm"]["admitted_per_s"]
    return phase


def section_b(runner: asyncio.Runner, port: int, calm: tuple[str, str], flood: tuple[str, str],
              sentences: list[str], sentences_file: Path, gateway: psutil.Process,
              args: argparse.Namespace) -> dict:
    """The three phases in rounds (each round runs all three, seconds apart, so that the ratios
    compare phases that saw the same background load of a shared machine); medians over rounds."""
    calm_requests = minilm_requests(port, calm[1], calm[0], sentences)
    alone, at_cap, flooded = ("calm_alone", f"calm_beside_{FEW}_flood_clients_at_cap",
                              f"calm_beside_{MANY}_flood_clients_ignoring_retry_after")
    phases = {alone: None, at_cap: (FEW, True), flooded: (MANY, False)}
    rounds: list[dict] = []
    for index in range(args.rounds):
        measured = {}
        for label, flood_load in phases.items():
            print(f"(b) round {index + 1}: {FEW} calm clients, {label}", file=sys.stderr)
            measured[label] = _phase_b(runner, port, calm_requests, flood, flood_load, sentences_file,
                                       gateway, args)
            print(f"    {measured[label]}", file=sys.stderr)
        measured["ratios"] = {
            "calm_admitted": _ratio(measured[flooded]["calm"]["admitted_per_s"],
                                    measured[at_cap]["calm"]["admitted_per_s"]),
            "admitted_total": _ratio(measured[flooded]["admitted_total_per_s"],
                                     measured[at_cap]["admitted_total_per_s"]),
            "calm_p99": _ratio(measured[flooded]["calm"]["p99_ms"], measured[at_cap]["calm"]["p99_ms"]),
            "gateway_cpu_cores_added": round(measured[flooded]["gateway_cpu_cores"]
                                             - measured[at_cap]["gateway_cpu_cores"], 3),
        }
        rounds.append(measured)

    def median(values: list) -> float | None:
        kept = [v for v in values if v is not None]
        return round(float(np.median(kept)), 3) if kept else None

    summary = {}
    for label in phases:
        summary[label] = {
            "calm_admitted_per_s": median([r[label]["calm"]["admitted_per_s"] for r in rounds]),
            "calm_p99_ms": median([r[label]["calm"]["p99_ms"] for r in rounds]),
            "admitted_total_per_s": median([r[label]["admitted_total_per_s"] for r in rounds]),
            "gateway_cpu_cores": median([r[label]["gateway_cpu_cores"] for r in rounds]),
        }
        if phases[label] is not None:
            for figure in ("admitted_per_s", "refused_per_s", "reconnects"):
                summary[label][f"flood_{figure}"] = median([r[label]["flood"][figure] for r in rounds])
    return {
        "summary": summary,
        "refusal_cost": {
            "calm_admitted_ratio": median([r["ratios"]["calm_admitted"] for r in rounds]),
            "admitted_total_ratio": median([r["ratios"]["admitted_total"] for r in rounds]),
            "calm_p99_ratio": median([r["ratios"]["calm_p99"] for r in rounds]),
            "gateway_cpu_cores_added": median([r["ratios"]["gateway_cpu_cores_added"] for r in rounds]),
            "gateway_cpu_cores_added_is": "the gateway process's CPU (cores) in the flooded phase minus the "
                                          "phase at the cap: what the refusals cost it, less noisy on a "
                                          "shared machine than throughput",
            "is": f"median over rounds of the phase with {MANY} Retry-After-ignoring flood clients over the "
                  f"phase with {FEW} well-behaved ones (the same admitted flood work, without the "
                  f"refusals): 1.0 means refusing costs the admitted requests nothing",
        },
        "rounds": rounds,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _big_requests(port: int, key: str) -> dict[str, bytes]:
    from kcloud.serving.oip import encode_infer_request

    sentence = b"The quick brown fox jumps over the lazy dog while the gateway keeps answering. "
    text = (sentence * (BIG_TEXT_BYTES // len(sentence) + 1))[:BIG_TEXT_BYTES]
    body, headers = encode_infer_request({"text": np.array([text], dtype=object)}, binary=True,
                                         binary_outputs=True)
    auth = {"Authorization": f"Bearer {key}"}
    oip = http_request(port, f"/v2/models/{MINILM}/infer", body, {**headers, **auth})
    embeddings_body = json.dumps({"model": MINILM, "input": text.decode()}).encode()
    openai = http_request(port, "/v1/embeddings", embeddings_body,
                          {"Content-Type": "application/json", **auth})
    return {"oip_binary_bytes": oip, "openai_embeddings": openai}


async def _one_request(port: int, raw: bytes, timeout_s: float) -> tuple[int, float]:
    """Send `raw`, read the whole answer: (status, seconds); status 0 when it failed or timed out."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, 0.0
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        length = _header_int(head.lower(), b"\r\ncontent-length:", 0)
        await asyncio.wait_for(reader.readexactly(length), timeout_s)
        return int(head[9:12]), time.perf_counter() - started
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return 0, time.perf_counter() - started
    finally:
        writer.close()


async def _stall(port: int, raw: bytes, gateway: psutil.Process, timeout_s: float) -> dict:
    """The big request, with a health probe every PROBE_EVERY_S on its own connection meanwhile."""
    probe = f"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies: list[float] = []
    rss = [gateway.memory_info().rss]
    rss_before = rss[0]
    done = asyncio.Event()

    async def probing() -> None:
        while not done.is_set():
            started = time.perf_counter()
            writer.write(probe)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_header_int(head.lower(), b"\r\ncontent-length:", 0))
            latencies.append(time.perf_counter() - started)
            rss.append(gateway.memory_info().rss)
            await asyncio.sleep(PROBE_EVERY_S)

    prober = asyncio.create_task(probing())
    await asyncio.sleep(0.5)  # a baseline of quiet probes first
    quiet = len(latencies)
    status, seconds = await _one_request(port, raw, timeout_s)
    await asyncio.sleep(0.3)  # and whatever stall follows the answer
    done.set()
    await asyncio.wait_for(prober, timeout=timeout_s)
    writer.close()
    await asyncio.sleep(1.0)
    during = np.array(latencies[quiet:]) * 1e3
    return {
        "status": status, "request_s": round(seconds, 3),
        "health_max_ms": round(float(during.max()), 1) if during.size else None,
        "health_p50_ms": round(float(np.median(during)), 2) if during.size else None,
        "health_probes": int(during.size),
        "health_quiet_max_ms": round(max(latencies[:quiet]) * 1e3, 2) if quiet else None,
        "gateway_rss_mib": {"before": round(rss_before / 2**20), "peak": round(max(rss) / 2**20),
                            "after_1s": round(gateway.memory_info().rss / 2**20)},
    }


def section_c(runner: asyncio.Runner, port: int, key: str, gateway: psutil.Process, timeout_s: float) -> dict:
    out = {"text_bytes": BIG_TEXT_BYTES}
    for label, raw in _big_requests(port, key).items():
        print(f"(c) one {BIG_TEXT_BYTES / 2**20:.0f} MiB text: {label}", file=sys.stderr)
        out[label] = runner.run(_stall(port, raw, gateway, timeout_s))
        print(f"    {out[label]}", file=sys.stderr)
    return out


def section_d(port: int, existing_key: str, probes: int) -> dict:
    """Mean refusal time of an unknown prefix and of a wrong secret, alternated on one connection."""
    import httpx

    from kcloud.tenancy.keys import PREFIX_ALPHABET, SECRET_ALPHABET, SECRET_LENGTH

    prefix = existing_key.split("_")[1]

    def random_text(alphabet: str, n: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(n))

    times: dict[str, list[float]] = {"unknown_prefix": [], "wrong_secret": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(5):  # warm the connection and the existing prefix's cache entry
            client.get("/v1/models", headers={"Authorization": f"Bearer {existing_key}"})
        for _ in range(probes):
            keys = {
                "unknown_prefix": f"kc_{random_text(PREFIX_ALPHABET, 12)}_{random_text(SECRET_ALPHABET, 43)}",
                "wrong_secret": f"kc_{prefix}_{random_text(SECRET_ALPHABET, SECRET_LENGTH)}",
            }
            for label, key in keys.items():
                started = time.perf_counter()
                response = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                times[label].append(time.perf_counter() - started)
                if response.status_code != 401:
                    raise RuntimeError(f"{label}: expected 401, got {response.status_code}")
    out: dict = {"probes_each": probes, "route": "GET /v1/models"}
    for label, samples in times.items():
        ms = np.array(samples) * 1e3
        out[label] = {"mean_ms": round(float(ms.mean()), 3), "p50_ms": round(float(np.median(ms)), 3),
                      "p90_ms": round(float(np.percentile(ms, 90)), 3), "max_ms": round(float(ms.max()), 3)}
    out["mean_ratio_unknown_to_wrong_secret"] = _ratio(out["unknown_prefix"]["mean_ms"],
                                                       out["wrong_secret"]["mean_ms"])
    return out


# ---------------------------------------------------------------------------------- main
def flood_main(args: argparse.Namespace) -> None:
    """`--role flood`: drive the flooding clients and print their tally as one JSON line."""
    sentences = json.loads(Path(args.sentences).read_text())
    requests = minilm_requests(args.port, args.model, args.key, sentences)

    async def run() -> Tally:
        started = asyncio.Event()
        task = asyncio.create_task(drive(args.port, requests, args.clients, args.warmup, args.seconds,
                                         honour=args.honour, started=started))
        await started.wait()
        print("STARTED", flush=True)
        return await task

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(run())
    print(json.dumps(tally.summary()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per load phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each load phase")
    parser.add_argument("--rounds", type=int, default=2, help="(b) rounds of its three phases")
    parser.add_argument("--sections", default="a,b,c,d", help="which sections to run, e.g. 'b' or 'a,c'")
    parser.add_argument("--auth-probes", type=int, default=200, help="(d) refusals timed per kind of key")
    parser.add_argument("--big-timeout", type=float, default=120.0,
                        help="(c) longest wait for the big answer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    # --role flood: the flooding clients' own process (started by section b)
    parser.add_argument("--role", choices=["main", "flood"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--honour", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sentences", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "flood":
        flood_main(args)
        return
    sections = set(args.sections.split(","))

    from tokenizers import Tokenizer

    from kcloud.app.stack import prepare_repository
    from kcloud.runtimes.layout import host_cores

    load_before = os.getloadavg()
    repository = prepare_repository(progress=False)
    entry = repository.get(MINILM)
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 256, TOKENS_PER_SENTENCE)

    port = free_port()
    home = server_home(repository.root)
    log_path = Path(tempfile.gettempdir()) / f"kcloud-bench-overload-{port}.log"
    sentences_file = home / "sentences.json"
    sentences_file.write_text(json.dumps(sentences))
    key = admin_key(home)
    print(f"starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    server = start_up(port, home, log_path)
    result: dict = {}
    try:
        wait_ready(port, server, 300, log_path)
        gateway = psutil.Process(server.pid)
        admin = Api(port, key)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if sections & {"a", "b", "d"}:
                flood = tenant_with_minilm(admin, port, "flood")
                set_cap(admin, "flood", CAP)
            if "a" in sections:
                flood_requests = minilm_requests(port, flood[1], flood[0], sentences)
                result["a_admission_256_clients"] = section_a(runner, port, admin, flood[0], flood_requests,
                                                              args)
            if "b" in sections:
                calm = tenant_with_minilm(admin, port, "calm")
                result["b_refusals_beside_admitted"] = section_b(runner, port, calm, flood, sentences,
                                                                 sentences_file, gateway, args)
            if "c" in sections:
                result["c_gateway_stall"] = section_c(runner, port, key, gateway, args.big_timeout)
            if "d" in sections:
                result["d_key_refusal_time"] = section_d(port, flood[0], args.auth_probes)
    finally:
        stop_up(server)
        shutil.rmtree(home, ignore_errors=True)

    report = {
        "benchmark": "overload",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": host_cores(), "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "workload": {
            "model": MINILM, "tokens_per_sentence": TOKENS_PER_SENTENCE,
            "protocol": "OIP v2 REST, binary tensors in and out, HTTP/1.1 keep-alive",
            "server": "kcloud up --replicas 1 (subprocess, SQLite, tenancy and control plane on); tenants "
                      "'flood' and 'calm' each own a MiniLM deployment of 1 replica",
            "warmup_s": args.warmup, "measured_s_per_phase": args.seconds, "tenant_cap": CAP,
            "clients": "asyncio/uvloop HTTP/1.1 keep-alive clients over pre-encoded requests, same machine; "
                       "the flooding ones in their own process",
        },
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("KCLOUD_LOG_LEVEL", "WARNING")
    main()
