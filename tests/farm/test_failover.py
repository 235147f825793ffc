"""Failover under load: SIGKILL a replica's worker process while requests flow, account for every
request, and see the replica placed again. Real server on loopback, real worker processes,
both databases."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ServedControlPlane, wait_until

CLIENTS = 4



@pytest.mark.slow
def test_killing_a_replica_under_load_loses_no_request_and_it_comes_back(db_url, repository, inventory):
    with (
        ServedControlPlane(repository, inventory, db_url) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        created = client.post(
            "/api/v1/deployments",
            json={"model": "small", "name": "svc", "replicas": 2, "constraints": {"vendor": "furiosa"}},
        )
        assert created.status_code == 201, created.text

        def running() -> list[dict]:
            view = client.get("/api/v1/deployments/svc").json()
            return [r for r in view["replica_list"] if r["state"] == "running"]

        before = wait_until(lambda: len(running()) == 2 and running(), 60, "2 running replicas")
        victim = before[0]

        stop = threading.Event()
        results: list[tuple[int, float, object]] = []  # (status, x, answer or error)
        sent = [0]
        lock = threading.Lock()

        def load(worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                n = 0
                while not stop.is_set():
                    x = float(worker * 1_000_000 + n)
                    n += 1
                    with lock:
                        sent[0] += 1
                    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [x] * 4}]}
                    try:
                        answer = own.post("/v2/models/svc/infer", json=body)
                    except httpx.HTTPError as exc:  # a lost request: no answer at all
                        with lock:
                            results.append((0, x, repr(exc)))
                        continue
                    payload = answer.json()
                    with lock:
                        results.append((answer.status_code, x, payload))

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(load, w) for w in range(CLIENTS)]
            wait_until(lambda: len(results) >= 40, 60, "load to flow")
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = len(results)
            back = wait_until(
                lambda: (r := running()) and len(r) == 2 and victim["id"] not in {x["id"] for x in r} and r,
                90,
                "the killed replica to be replaced",
            )
            wait_until(lambda: len(results) >= killed_at + 40, 60, "load to flow after the replacement")
            stop.set()
            for future in futures:
                future.result()

        # Every request sent has an answer: a correct one, or an explicit error (never a lost one).
        assert len(results) == sent[0]
        lost = [r for r in results if r[0] == 0]
        assert lost == []
        wrong = [r for r in results if r[0] == 200 and r[2]["outputs"][0]["data"] != [2 * r[1]] * 4]
        assert wrong == []
        # Requests in flight on the killed replica were retried once on the other one: none failed.
        failed = [r for r in results if r[0] != 200]
        assert failed == []
        assert sum(1 for r in results[killed_at:] if r[0] == 200) >= 40

        assert victim["pid"] not in {r["pid"] for r in back}
        events = client.get("/api/v1/events", params={"deployment": "svc"}).json()
        died = [e for e in events if e["kind"] == "replica.died"]
        assert len(died) == 1 and died[0]["replica"] == victim["id"]
        assert f"worker process {victim['pid']} died" in died[0]["message"]
        placements = client.get("/api/v1/deployments/svc/placement").json()["placements"]
        assert placements[0]["trigger"] == "failover" and placements[0]["outcome"] == "placed"
        assert client.get("/api/v1/deployments/svc").json()["status"] == "ready"
