"""`LocalCluster`: a kcloud cluster on this machine, on loopback, as a user starts one by hand
(docs/cluster.md's quick start): `kcloud cluster start` and `kcloud cluster join` processes,
each Ray node on 127.0.0.1 with its own ports. The tests and `benchmarks/cluster_serving.py`
use it. Each node runs in its own process group, so `kill` ends a node the way a server dies:
every process of it at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KCLOUD = [str(Path(sys.executable).parent / "kcloud")]
#: How long a node may take to join, and a head to serve.
JOIN_TIMEOUT_S = 90.0
HEAD_TIMEOUT_S = 180.0


class ClusterWaitError(RuntimeError):
    """Something the cluster was expected to do did not happen in time (or a process exited)."""


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    url: str
    address: str
    head: subprocess.Popen
    logs: Path
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def start(cls, logs: Path, *, head_args: Sequence[str] = (),
              env: dict[str, str] | None = None) -> LocalCluster:
        """Start a head (gateway on a free port, insecure: loopback only) and wait until it serves."""
        port, ray_port = free_loopback_port(), free_loopback_port()
        head = subprocess.Popen(
            [*KCLOUD, "cluster", "start", "--port", str(port), "--ray-port", str(ray_port),
             "--insecure-no-auth", *head_args],
            stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        cluster = cls(f"http://127.0.0.1:{port}", f"127.0.0.1:{ray_port}", head, logs)
        try:
            cluster.wait_for(cluster._serving, "the head to serve", timeout_s=HEAD_TIMEOUT_S, process=head,
                             log=logs / "head.log")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _serving(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def join(self, name: str, *extra: str) -> subprocess.Popen:
        """Start `kcloud cluster join` for node `name`; wait until the head lists its CPU healthy."""
        log = self.logs / f"join-{name}.log"
        process = subprocess.Popen([*KCLOUD, "cluster", "join", self.address, "--node", name, *extra],
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = process
        self.wait_for(lambda: self.device_healthy(f"{name}/cpu0"), f"node {name} to join",
                      process=process, log=log)
        return process

    def kill(self, name: str) -> None:
        """Kill node `name`: its join process, its raylet and its replicas' processes at once."""
        process = self.nodes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    # -- reading the head's admin API -------------------------------------------------------
    def devices(self) -> dict[str, dict]:
        rows = httpx.get(f"{self.url}/api/v1/devices", timeout=10).json()
        return {row["uid"]: row for row in (rows["devices"] if isinstance(rows, dict) else rows)}

    def device_healthy(self, uid: str) -> bool:
        row = self.devices().get(uid)
        return bool(row and row.get("healthy") and row.get("present", True))

    def events(self, *, deployment: str | None = None, device: str | None = None) -> list[dict]:
        params = {k: v for k, v in {"limit": 1000, "deployment": deployment, "device": device}.items() if v}
        rows = httpx.get(f"{self.url}/api/v1/events", params=params, timeout=10).json()
        return rows["events"] if isinstance(rows, dict) else rows

    def deployment(self, name: str) -> dict:
        return httpx.get(f"{self.url}/api/v1/deployments/{name}", timeout=10).json()

    def running(self, name: str) -> int:
        return sum(r["state"] == "running" for r in self.deployment(name).get("replica_list", []))

    def deploy(self, name: str, model: str, replicas: int, *, policy: str = "spread") -> None:
        answer = httpx.post(f"{self.url}/api/v1/deployments", timeout=60,
                            json={"name": name, "model": model, "replicas": replicas, "policy": policy})
        if answer.status_code not in (200, 201):
            raise ClusterWaitError(f"deploying {name}: {answer.status_code} {answer.text}")

    def wait_for(self, check: Callable[[], bool], what: str, *, timeout_s: float = JOIN_TIMEOUT_S,
                 process: subprocess.Popen | None = None, log: Path | None = None) -> float:
        """Poll `check` until true; the seconds it took. ClusterWaitError on timeout or exit."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if process is not None and process.poll() is not None:
                raise ClusterWaitError(f"gave up waiting for {what}: the process exited with "
                                       f"{process.returncode}:\n" + (log.read_text()[-4000:] if log else ""))
            if check():
                return time.monotonic() - started
            time.sleep(0.1)  # a cluster converging: nothing to wait on but its answers
        raise ClusterWaitError(f"gave up waiting for {what} after {timeout_s:.0f} s")

    def stop(self) -> None:
        """The head first (it stops the replicas on the nodes), then the nodes."""
        if self.head.poll() is None:
            self.head.send_signal(signal.SIGINT)
        _wait_or_kill(self.head, 30)
        leaving = [self.nodes.pop(name) for name in list(self.nodes)]
        for process in leaving:  # all at once: each takes a few seconds to stop its Ray node
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in leaving:
            _wait_or_kill(process)


def _wait_or_kill(process: subprocess.Popen, timeout_s: float = 15) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
