"""Autoscaling under a step and a burst of load, and a cold start from zero (issue 19's "Speed").

One run of `kcloud up` (a subprocess with its own kcloud home and SQLite database, as a user runs
it) serves an autoscaled MiniLM deployment (`all-MiniLM-L6-v2`, one 32-token sentence per request,
OIP binary tensors), scaled on requests per second: `--target` per replica, 1 to 4 replicas, a
10 s stable and 2 s panic window, scale-in after 10 s. An open-loop Poisson load (arrivals do not
wait for answers, as real users do not) runs these phases:

    low (R) 20 s -> step (4R) 30 s -> low (R) 40 s -> burst (20R) 4 s -> low (R) 20 s

and a poller reads the deployment every 0.25 s. Then the policy's minimum is set to 0, the
deployment idles down to zero replicas, and one request is sent with a 60 s deadline: its latency
is the cold start as a client sees it, next to the server's own `autoscale.cold_start` event.

Reported (JSON; figures per phase): offered and served rate, p50/p99 latency against `--slo-ms`,
requests shed (429, each with Retry-After) and failed; the time from the step to 4 replicas
running and from its end back to 1; the replica-seconds used against a fixed deployment sized
for the peak (4 replicas all along); the cold start. An SVG plot of offered load, p99 and replicas
over time goes beside the JSON (docs/autoscaling.svg is one). Everything binds and connects to
127.0.0.1 only. About 3.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overload import Api, start_up, stop_up  # noqa: E402  (sibling scripts, not a package)
from serving_throughput import (  # noqa: E402
    MINILM,
    TOKENS_PER_SENTENCE,
    admin_key,
    free_port,
    http_request,
    sentences_of_exactly,
    server_home,
    wait_ready,
)

RESULTS = HERE / "results" / "autoscaling.json"
NAME = "minilm-auto"
MAX_REPLICAS = 4


@dataclass
class Phase:
    name: str
    rate: float  # requests per second offered
    seconds: float


@dataclass
class Outcome:
    phase: str
    sent_at: float
    status: int  # 0: no answer (connection failed)
    latency_s: float
    retry_after: bool = False


@dataclass
class Timeline:
    """The poller's readings: (seconds since the load began, desired replicas, running replicas)."""

    points: list[tuple[float, int, int]] = field(default_factory=list)


# ------------------------------------------------------------------------------ open-loop load
class Pool:
    """Keep-alive HTTP/1.1 connections to 127.0.0.1: one request at a time on each, more opened as
    arrivals outrun the answers (an open loop never waits for a free connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, raw: bytes) -> tuple[int, bool]:
        """The status and whether it carried Retry-After; 0 when no answer came. A kept-alive
        connection the server closed while idle (its keep-alive timeout) is retried on a new one."""
        if self._idle:
            status, retry_after = await self._exchange(self._idle.pop(), raw)
            if status:
                return status, retry_after
        try:
            connection = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return 0, False
        return await self._exchange(connection, raw)

    async def _exchange(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        raw: bytes) -> tuple[int, bool]:
        reader, writer = connection
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            return 0, False
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append(connection)
        return status, "retry-after" in headers

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


async def offer(port: int, requests: list[bytes], phases: list[Phase],
                seed: int) -> tuple[list[Outcome], float]:
    """Poisson arrivals at each phase's rate; every request's outcome. Returns them and the start."""
    pool = Pool(port)
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()

    async def one(phase: str, raw: bytes) -> None:
        sent = time.monotonic()
        status, retry_after = await pool.send(raw)
        outcomes.append(Outcome(phase, sent - start, status, time.monotonic() - sent, retry_after))

    at = start
    for phase in phases:
        end = at + phase.seconds
        while True:
            at += rng.expovariate(phase.rate)
            if at >= end:
                at = end
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            task = asyncio.create_task(one(phase.name, requests[rng.randrange(len(requests))]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=120)
    pool.close()
    return outcomes, start


def poll(api: Api, stop: threading.Event, start_holder: list[float], timeline: Timeline) -> None:
    while not stop.is_set():
        view = api.client.get(f"/api/v1/deployments/{NAME}").json()
        if start_holder:
            timeline.points.append((time.monotonic() - start_holder[0], view["replicas"], view["running"]))
        stop.wait(0.25)


# ------------------------------------------------------------------------------ figures
def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(latencies) * 1e3, q)), 1) if latencies else None


def phase_figures(outcomes: list[Outcome], phases: list[Phase], slo_ms: float) -> list[dict]:
    out = []
    for phase in phases:
        mine = [o for o in outcomes if o.phase == phase.name]
        ok = [o.latency_s for o in mine if o.status == 200]
        statuses = Counter(o.status for o in mine)
        p99 = percentile_ms(ok, 99)
        out.append({
            "phase": phase.name, "seconds": phase.seconds, "offered_rps": phase.rate,
            "sent": len(mine), "served_rps": round(len(ok) / phase.seconds, 1),
            "p50_ms": percentile_ms(ok, 50), "p99_ms": p99,
            "p99_within_slo": None if p99 is None else p99 <= slo_ms,
            "shed_429": statuses[429],
            "shed_with_retry_after": sum(1 for o in mine if o.status == 429 and o.retry_after),
            "failed": sum(n for s, n in statuses.items() if s not in (200, 429)),
        })
    return out


def first_time(points: list[tuple[float, int, int]], after: float, test) -> float | None:
    for t, desired, running in points:
        if t >= after and test(desired, running):
            return round(t - after, 2)
    return None


def replica_seconds(points: list[tuple[float, int, int]], until: float) -> float:
    total = 0.0
    for (t0, _, running), (t1, _, _) in zip(points, [*points[1:], (until, 0, 0)], strict=False):
        if t0 >= until:
            break
        total += running * (min(t1, until) - t0)
    return round(total, 1)


def write_svg(path: Path, outcomes: list[Outcome], timeline: Timeline, phases: list[Phase],
              slo_ms: float) -> None:
    """Three panels over time: offered requests/s, p99 latency per second, replicas running."""
    length = sum(p.seconds for p in phases)
    seconds = int(length) + 1
    offered = [0] * seconds
    late: list[list[float]] = [[] for _ in range(seconds)]
    for o in outcomes:
        second = min(seconds - 1, int(o.sent_at))
        offered[second] += 1
        if o.status == 200:
            late[second].append(o.latency_s * 1e3)
    p99 = [float(np.percentile(x, 99)) if x else None for x in late]
    width, panel, left, gap = 720, 120, 60, 30
    height = 3 * panel + 4 * gap

    def xs(t: float) -> float:
        return left + (width - left - 20) * t / length

    def series(values: list[tuple[float, float]], top: float, y0: float, color: str) -> str:
        if not values:
            return ""
        points = " ".join(f"{xs(t):.1f},{y0 + panel - panel * min(v, top) / top:.1f}" for t, v in values)
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    panels = [
        ("offered requests/s", [(i + 0.5, float(v)) for i, v in enumerate(offered)], "#1f77b4", None),
        (f"p99 latency, ms (SLO {slo_ms:g} ms dashed)",
         [(i + 0.5, v) for i, v in enumerate(p99) if v is not None], "#d62728", slo_ms),
        ("replicas running", [(t, float(r)) for t, _, r in timeline.points], "#2ca02c", None),
    ]
    for index, (title, values, color, line) in enumerate(panels):
        y0 = gap + index * (panel + gap)
        top = max([v for _, v in values] + [line or 0, 1.0]) * 1.1
        if index == 2:
            top = MAX_REPLICAS + 0.5
        parts.append(f'<text x="{left}" y="{y0 - 6}">{title}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{width - left - 20}" height="{panel}" fill="none" '
                     'stroke="#999"/>')
        parts.append(f'<text x="{left - 6}" y="{y0 + 10}" text-anchor="end">{top:.0f}</text>')
        parts.append(f'<text x="{left - 6}" y="{y0 + panel}" text-anchor="end">0</text>')
        if line is not None:
            y = y0 + panel - panel * line / top
            parts.append(f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d62728" '
                         'stroke-dasharray="4 3"/>')
        at = 0.0
        for phase in phases:  # phase boundaries
            at += phase.seconds
            parts.append(f'<line x1="{xs(at):.1f}" x2="{xs(at):.1f}" y1="{y0}" y2="{y0 + panel}" '
                         'stroke="#ddd"/>')
        parts.append(series(values, top, y0, color))
    parts.append(f'<text x="{left}" y="{height - 8}">seconds since the load began (phases: '
                 + ", ".join(f"{p.name} {p.rate:g}/s" for p in phases) + ")</text></svg>")
    path.write_text("\n".join(parts))


# ------------------------------------------------------------------------------ main
def wait_for(api: Api, test, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = api.client.get(f"/api/v1/deployments/{NAME}").json()
        if test(view):
            return view
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


def cold_start(port: int, api: Api, raw: bytes, policy: dict) -> dict:
    """Set min to 0, wait for zero replicas, send one request with a 60 s deadline."""
    api.call("PATCH", f"/api/v1/deployments/{NAME}", json={"autoscale": policy | {"min_replicas": 0}})
    began = time.monotonic()
    wait_for(api, lambda v: v["replicas"] == 0 and not v["replica_list"], 180, "scale to zero")
    idle_to_zero_s = round(time.monotonic() - began, 1)
    request = raw.replace(b"\r\n\r\n", b"\r\nX-Request-Timeout-Ms: 60000\r\n\r\n", 1)

    async def one() -> tuple[int, float]:
        pool = Pool(port)
        sent = time.monotonic()
        status, _ = await pool.send(request)
        pool.close()
        return status, time.monotonic() - sent

    status, latency = asyncio.run(one())
    server: list[float] = []
    deadline = time.monotonic() + 10  # the autoscaler records it at its next interval
    while not server and time.monotonic() < deadline:
        events = api.client.get("/api/v1/events", params={"deployment": NAME, "limit": 1000}).json()
        server = [e["data"]["cold_start_s"] for e in events if e["kind"] == "autoscale.cold_start"]
        time.sleep(0.25)
    return {"status": status, "client_latency_s": round(latency, 3),
            "server_cold_start_s": server[-1] if server else None, "idle_to_zero_s": idle_to_zero_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="the low load R, requests/s")
    parser.add_argument("--target", type=float, default=25.0,
                        help="requests/s per replica the policy keeps")
    parser.add_argument("--slo-ms", type=float, default=200.0,
                        help="the p99 latency the figures are held to")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every phase's length (0.3: a quick run)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where to write the JSON (the SVG goes beside)")
    args = parser.parse_args()

    from tokenizers import Tokenizer

    from kcloud.app.stack import prepare_repository
    from kcloud.serving.oip import encode_infer_request

    r = args.rate
    phases = [Phase("low", r, 20), Phase("step", 4 * r, 30), Phase("low-after", r, 40),
              Phase("burst", 20 * r, 4), Phase("tail", r, 20)]
    phases = [Phase(p.name, p.rate, p.seconds * args.scale) for p in phases]
    policy = {"min_replicas": 1, "max_replicas": MAX_REPLICAS, "metric": "rps", "target": args.target,
              "stable_window_s": 10, "panic_window_s": 2, "downscale_delay_s": 10}

    repository = prepare_repository(progress=False)
    entry = repository.get(MINILM)
    tokenizer = Tokenizer.from_file(str(entry.file(entry.config.processing.tokenizer)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sentences = sentences_of_exactly(tokenizer, 64, TOKENS_PER_SENTENCE)

    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-bench-autoscaling-{port}.log"
    home = server_home(repository.root)
    key = admin_key(home)
    print(f"starting kcloud up on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    server = start_up(port, home, log_path)
    try:
        wait_ready(port, server, 300, log_path)
        api = Api(port, key)
        api.call("POST", "/api/v1/deployments", json={"model": MINILM, "name": NAME, "autoscale": policy})
        wait_for(api, lambda v: v["running"] == 1, 300, "the first replica")
        requests = []
        for sentence in sentences:
            body, headers = encode_infer_request({entry.config.inputs[0].name: np.array([sentence.encode()],
                                                                                        dtype=object)},
                                                 binary=True, binary_outputs=True)
            requests.append(http_request(port, f"/v2/models/{NAME}/infer", body,
                                         {**headers, "Authorization": f"Bearer {key}"}))
        asyncio.run(offer(port, requests, [Phase("warm-up", r, 3)], args.seed))  # connections, caches

        timeline, start_holder, stop = Timeline(), [], threading.Event()
        poller = threading.Thread(target=poll, args=(Api(port, key), stop, start_holder, timeline),
                                  daemon=True)
        poller.start()

        async def run() -> tuple[list[Outcome], float]:
            start_holder.append(time.monotonic())
            return await offer(port, requests, phases, args.seed)

        print("load: " + " -> ".join(f"{p.name} {p.rate:g}/s for {p.seconds:g} s" for p in phases),
              file=sys.stderr)
        outcomes, _ = asyncio.run(run())
        stop.set()
        poller.join(5)
        length = sum(p.seconds for p in phases)
        step_at = phases[0].seconds
        step_end = step_at + phases[1].seconds
        burst_at = step_end + phases[2].seconds
        print("cold start: idling to zero", file=sys.stderr)
        cold = cold_start(port, api, requests[0], policy)
        events = api.client.get("/api/v1/events", params={"deployment": NAME, "limit": 1000}).json()
    finally:
        stop_up(server)

    used = replica_seconds(timeline.points, length)
    fixed = MAX_REPLICAS * length
    figures = phase_figures(outcomes, phases, args.slo_ms)
    result = {
        "benchmark": "autoscaling",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": MINILM, "tokens_per_request": TOKENS_PER_SENTENCE,
        "policy": policy, "slo_p99_ms": args.slo_ms,
        "phases": figures,
        "step_to_4_running_s": first_time(timeline.points, step_at, lambda d, run: run >= MAX_REPLICAS),
        "step_decision_s": first_time(timeline.points, step_at, lambda d, run: d >= MAX_REPLICAS),
        "step_end_to_1_replica_s": first_time(timeline.points, step_end, lambda d, run: d == 1 and run == 1),
        "burst_peak_replicas": max((run for t, _, run in timeline.points if burst_at <= t <= burst_at + 15),
                                   default=None),
        "replica_seconds": used, "replica_seconds_fixed_at_peak": fixed,
        "replica_seconds_ratio": round(used / fixed, 3),
        "requests": len(outcomes),
        "lost": sum(1 for o in outcomes if o.status == 0),
        "cold_start": cold,
        "autoscale_events": [{"at": e["at"], "kind": e["kind"], "message": e["message"]}
                             for e in events if e["kind"].startswith("autoscale")],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_svg(args.out.with_suffix(".svg"), outcomes, timeline, phases, args.slo_ms)
    print(json.dumps({k: v for k, v in result.items() if k != "autoscale_events"}, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.svg')}", file=sys.stderr)


if __name__ == "__main__":
    main()
