"""Usage durability: what each way of writing usage costs in served throughput, and what a crash loses.

Usage (requests, samples, device-seconds, energy) is what tenants are billed on. The gateway counts
it in memory and writes it to the database either every interval (`KCLOUD_USAGE_FLUSH_MS`; 2 s
before issue 13, 100 ms now) or before acknowledging each request (`KCLOUD_USAGE_DURABILITY=
before-ack`: the answer waits for a group commit). For each mode, on SQLite and on PostgreSQL
(when one answers on 127.0.0.1:5432), one `kcloud up` (a subprocess with its own kcloud home and
a fresh database; PostgreSQL: a schema of its own, dropped after) is measured:

1. served throughput and latency of `noop` at 64 concurrent clients (the gateway's own cost, where
   any per-request work shows most) and of MiniLM at 32 (a real model's);
2. a crash: 32 clients on `noop` with a fresh admin key, then SIGKILL of the server's process group
   under that load; afterwards, the requests the clients saw answered minus the requests the
   database holds for that key is what the crash lost, also given as milliseconds of traffic.

Modes are run one after the other per database, in rounds (`--rounds`), so a slow spell of the
shared machine does not land on one mode only. Everything binds and connects to 127.0.0.1 only.

Writes benchmarks/results/usage_durability.json and prints it. The default run takes about 5
minutes; `--modes`, `--backends`, `--seconds` make shorter ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overload import Api, Tally, drive, minilm_requests, start_up, stop_up  # noqa: E402
from serving_throughput import (  # noqa: E402  (sibling scripts, not a package)
    MINILM,
    NOOP,
    TOKENS_PER_SENTENCE,
    free_port,
    http_request,
    sentences_of_exactly,
    server_home,
    wait_ready,
)

RESULTS = HERE / "results" / "usage_durability.json"
PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MODES = {
    "interval-2000ms": {"KCLOUD_USAGE_FLUSH_MS": "2000", "KCLOUD_USAGE_DURABILITY": "interval"},
    "interval-100ms": {"KCLOUD_USAGE_FLUSH_MS": "100", "KCLOUD_USAGE_DURABILITY": "interval"},
    "before-ack": {"KCLOUD_USAGE_FLUSH_MS": "100", "KCLOUD_USAGE_DURABILITY": "before-ack"},
}


def postgres_reachable() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


class FreshDatabase:
    """A new empty database for one server: a SQLite file in its home, or a PostgreSQL schema."""

    def __init__(self, backend: str, home: Path) -> None:
        self.backend = backend
        self.schema = None
        if backend == "sqlite":
            self.url = f"sqlite:///{home / 'kcloud.db'}"
            return
        import sqlalchemy as sa

        self.schema = f"bench_usage_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(PG_BASE)
        with engine.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        engine.dispose()
        self.url = f"{PG_BASE}?options=-csearch_path%3D{self.schema}"

    def recorded_requests(self, prefix: str) -> int:
        from kcloud.store.db import open_database
        from kcloud.tenancy import usage

        db = open_database(self.url)
        try:
            rows = usage.query(db, key=prefix, group_by=())
        finally:
            db.close()
        return rows[0].requests if rows else 0

    def drop(self) -> None:
        if self.schema is None:
            return
        import sqlalchemy as sa

        engine = sa.create_engine(PG_BASE)
        with engine.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{self.schema}" CASCADE')
        engine.dispose()


def create_admin_key(env: dict[str, str]) -> str:
    done = subprocess.run([str(Path(sys.executable).with_name("kcloud")), "keys", "create-admin",
                           "--name", "usage-durability"], capture_output=True, text=True, timeout=120,
                          check=True, env=env)
    match = re.search(r"\bkc_\w+", done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"no key in the output of kcloud keys create-admin:\n{done.stdout}{done.stderr}")
    return match.group(0)


def noop_requests(port: int, key: str, repository) -> list[bytes]:
    from kcloud.serving.oip import encode_infer_request

    spec = repository.get(NOOP).config.inputs[0]
    shape = [1 if d == -1 else d for d in spec.shape]
    tensor = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    body, headers = encode_infer_request({spec.name: tensor}, binary=True, binary_outputs=True)
    auth = {"Authorization": f"Bearer {key}"}
    return [http_request(port, f"/v2/models/{NOOP}/infer", body, {**headers, **auth})]


def one_server(backend: str, mode: str, repository, sentences: list[str], args: argparse.Namespace) -> dict:
    home = server_home(repository.root)
    database = FreshDatabase(backend, home)
    env = {**os.environ, "KCLOUD_HOME": str(home), "KCLOUD_DB_URL": database.url, **MODES[mode]}
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"kcloud-bench-usage-{port}.log"
    out: dict = {"backend": backend, "mode": mode}
    server = None
    try:
        key = create_admin_key(env)
        server = start_up(port, home, log_path, env={k: env[k] for k in ("KCLOUD_DB_URL", *MODES[mode])})
        wait_ready(port, server, 300, log_path)
        gateway = psutil.Process(server.pid)
        admin = Api(port, key)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for label, requests, clients in (
                ("noop_c64", noop_requests(port, key, repository), 64),
                ("minilm_c32", minilm_requests(port, MINILM, key, sentences), 32),
            ):
                cpu0 = sum(gateway.cpu_times()[:2])
                tally = runner.run(drive(port, requests, clients, args.warmup, args.seconds, honour=True))
                summary = tally.summary()
                summary["gateway_cpu_cores"] = round((sum(gateway.cpu_times()[:2]) - cpu0)
                                                     / (args.warmup + args.seconds), 3)
                out[label] = summary
                print(f"  {backend} {mode} {label}: {summary['admitted_per_s']} req/s, "
                      f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms", file=sys.stderr)
            crash_key = admin.call("POST", "/api/v1/keys", json={"role": "admin", "name": "crash"}).json()
            out["crash"] = runner.run(crash(port, server, noop_requests(port, crash_key["key"], repository),
                                            args.crash_after))
        server.wait(30)
        recorded = database.recorded_requests(crash_key["info"]["prefix"])
        crash_out = out["crash"]
        acked = crash_out.pop("acked")
        lost = acked - recorded
        rate = crash_out["acked_per_s"]
        crash_out.update({
            "acked": acked, "recorded": recorded, "lost": lost,
            "lost_ms_of_traffic": round(lost / rate * 1000, 1) if rate else None,
            "flush_interval_ms": float(MODES[mode]["KCLOUD_USAGE_FLUSH_MS"]),
        })
        print(f"  {backend} {mode} crash: {crash_out}", file=sys.stderr)
    finally:
        if server is not None and server.poll() is None:
            stop_up(server)
        database.drop()
        shutil.rmtree(home, ignore_errors=True)
    return out


async def crash(port: int, server: subprocess.Popen, requests: list[bytes], after_s: float) -> dict:
    """32 clients; SIGKILL of the server's process group `after_s` into the load."""
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    tally = Tally(now, now + after_s + 0.5, acks=[])
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.perf_counter())
        os.killpg(server.pid, signal.SIGKILL)

    loop.call_later(after_s, kill)
    await drive(port, requests, 32, 0.0, after_s + 0.5, honour=True, tally=tally)
    acks = np.array(tally.acks)
    acked = int(acks.size)
    rate = float(np.sum(acks > killed_at[0] - 1.0)) if acked else 0.0  # the last second's rate
    return {"acked": acked, "acked_per_s": round(rate, 1), "after_s": after_s,
            "acked_after_kill": int(np.sum(acks > killed_at[0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per throughput phase")
    parser.add_argument("--warmup", type=float, default=1.5, help="warm-up before each throughput phase")
    parser.add_argument("--crash-after", type=float, default=3.0, help="seconds of load before the SIGKILL")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the modes, per database")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

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
    backends = [b for b in args.backends.split(",") if b]
    if "postgresql" in backends and not postgres_reachable():
        print("PostgreSQL is not reachable on 127.0.0.1:5432: skipped", file=sys.stderr)
        backends.remove("postgresql")
    modes = [m for m in args.modes.split(",") if m]
    runs: list[dict] = []
    for backend in backends:
        for index in range(args.rounds):
            for mode in modes:
                print(f"{backend}, round {index + 1}, {mode}", file=sys.stderr)
                runs.append(one_server(backend, mode, repository, sentences, args))

    summary: dict = {}
    for backend in backends:
        for mode in modes:
            mine = [r for r in runs if r["backend"] == backend and r["mode"] == mode]

            def median(path: tuple[str, str], runs_of: list[dict] = mine) -> float | None:
                values = [r[path[0]][path[1]] for r in runs_of if r[path[0]][path[1]] is not None]
                return round(float(np.median(values)), 2) if values else None

            summary[f"{backend}/{mode}"] = {
                "noop_c64_req_per_s": median(("noop_c64", "admitted_per_s")),
                "noop_c64_p50_ms": median(("noop_c64", "p50_ms")),
                "noop_c64_p99_ms": median(("noop_c64", "p99_ms")),
                "minilm_c32_req_per_s": median(("minilm_c32", "admitted_per_s")),
                "minilm_c32_p99_ms": median(("minilm_c32", "p99_ms")),
                "crash_lost_requests": [r["crash"]["lost"] for r in mine],
                "crash_lost_ms_of_traffic": [r["crash"]["lost_ms_of_traffic"] for r in mine],
            }
    report = {
        "benchmark": "usage_durability",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": host_cores(), "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "workload": {
            "server": "kcloud up --replicas 1 (subprocess, process isolation), fresh database per run",
            "noop": "binary OIP FP32 tensor, 64 keep-alive clients",
            "minilm": f"one {TOKENS_PER_SENTENCE}-token sentence per request, binary OIP, "
                      f"32 keep-alive clients",
            "crash": f"32 clients on noop with a fresh admin key, SIGKILL of the server's process group "
                     f"after {args.crash_after} s; lost = answered at the client - requests in the "
                     f"usage table",
            "warmup_s": args.warmup, "measured_s_per_phase": args.seconds, "rounds": args.rounds,
            "modes": MODES,
        },
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("KCLOUD_LOG_LEVEL", "WARNING")
    main()
