"""The issue's "done when", as a new user does it, on SQLite and on PostgreSQL:

1. run `kcloud up` (a real subprocess on a loopback port, with the example K-Cloud farm), and copy
   the admin key it prints at a new database's first start;
2. deploy MiniLM with 2 replicas across the emulated farm and the CPU (`kcloud deploy create`);
3. see where the replicas went and why (`kcloud placement explain`);
4. kill one (SIGKILL its worker process) and watch it come back;
5. restart the server and find the deployment still served.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
FARM = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"
MODEL = "all-MiniLM-L6-v2"
ENV = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}


def poll(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"kcloud up exited with {process.returncode} while waiting for {what}")
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.1)  # a separate process: there is nothing to wait on but its answers
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Server:
    """`kcloud up` in a subprocess; its output is read as it comes (the admin key is in it)."""

    def __init__(self, port: int, db_url: str) -> None:
        self.process = subprocess.Popen(
            [KCLOUD, "up", "--port", str(port), "--farm", str(FARM), "--db", db_url, "--replicas", "1",
             "--model", MODEL],  # not the chat model: its engine would add ~40 s to each start
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        url = f"http://127.0.0.1:{port}"
        ready = lambda: httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200  # noqa: E731
        poll(ready, 180, "kcloud up to be ready", self.process)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def admin_key(self) -> str:
        """The admin key `kcloud up` prints at a new database's first start."""
        found = poll(
            lambda: re.search(r"export KCLOUD_API_KEY=(kc_\S+)", "".join(self.lines)),
            10,
            "the admin key in kcloud up's output",
        )
        return found.group(1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=90)
        self._reader.join(10)
        output = "".join(self.lines)
        assert self.process.returncode == 0, output[-3000:]
        assert "kcloud stopped." in output


def kcloud(url: str, key: str, *args: str) -> subprocess.CompletedProcess:
    env = {**ENV, "KCLOUD_API_KEY": key}
    return subprocess.run([KCLOUD, *args, "--url", url], capture_output=True, text=True, env=env, timeout=240)


def embed(client: httpx.Client, name: str) -> list[int]:
    text_input = client.get(f"/v2/models/{name}").json()["inputs"][0]["name"]
    body = {
        "inputs": [{"name": text_input, "datatype": "BYTES", "shape": [1], "data": ["K-Cloud serves this"]}]
    }
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"][0]["shape"]


@pytest.mark.slow
def test_deploy_see_kill_return_restart(db_url, builtin_repository, free_port):
    url = f"http://127.0.0.1:{free_port}"
    server = Server(free_port, db_url)
    key = server.admin_key()  # 1. a new user copies it from the banner
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=url, timeout=60, headers=auth) as client:
            # 2. Deploy MiniLM with 2 replicas; the farm's devices and this machine's CPU are candidates.
            created = kcloud(url, key, "deploy", "create", MODEL, "--name", "minilm", "--replicas", "2")
            assert created.returncode == 0, created.stderr
            assert "minilm  all-MiniLM-L6-v2 v1  ready  2/2 running" in created.stdout

            # 3. Where, and why.
            explained = kcloud(url, key, "placement", "explain", "minilm")
            assert explained.returncode == 0, explained.stderr
            assert explained.stdout.count("chosen for 1 replica(s): perf/watt") == 2
            assert "(modelled)" in explained.stdout
            devices = {d["uid"]: d for d in client.get("/api/v1/devices").json()}
            cpu = next(uid for uid, d in devices.items() if d["kind"] == "cpu" and not d["emulated"])
            assert cpu in explained.stdout  # the CPU was a candidate, with its reason
            assert any(d["emulated"] for d in devices.values())
            assert embed(client, "minilm") == [1, 384]

            # 4. Kill one replica's process; it comes back.
            view = client.get("/api/v1/deployments/minilm").json()
            victim = view["replica_list"][0]
            os.kill(victim["pid"], signal.SIGKILL)

            def replaced() -> list[dict] | None:
                now = client.get("/api/v1/deployments/minilm").json()
                running = [r for r in now["replica_list"] if r["state"] == "running"]
                ids = {r["id"] for r in running}
                return running if len(running) == 2 and victim["id"] not in ids else None

            back = poll(replaced, 120, "the killed replica to come back", server.process)
            assert victim["pid"] not in {r["pid"] for r in back}
            kinds = [e["kind"] for e in client.get("/api/v1/events", params={"deployment": "minilm"}).json()]
            assert "replica.died" in kinds and kinds[-1] in ("deployment.ready", "replica.started")
            assert embed(client, "minilm") == [1, 384]
            placed_on = sorted(r["device"] for r in back)
    finally:
        server.stop()

    # 5. Restart: the deployment is restored from the database, on the same devices, and served.
    server = Server(free_port, db_url)
    try:
        with httpx.Client(base_url=url, timeout=60, headers=auth) as client:

            def restored() -> dict | None:
                view = client.get("/api/v1/deployments/minilm").json()
                return view if view["running"] == 2 else None

            view = poll(restored, 120, "the deployment to be restored", server.process)
            assert view["status"] == "ready"
            assert sorted(r["device"] for r in view["replica_list"]) == placed_on
            assert embed(client, "minilm") == [1, 384]
            events = client.get("/api/v1/events", params={"deployment": "minilm"}).json()
            assert [e["kind"] for e in events].count("replica.restoring") == 2
            listed = kcloud(url, key, "deploy", "list")
            assert "minilm" in listed.stdout and "2/2" in listed.stdout
    finally:
        server.stop()
