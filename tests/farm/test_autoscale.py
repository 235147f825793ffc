"""Autoscaling end to end: a real server on loopback, real worker processes, real HTTP load.

- a step of load scales a deployment out; when it falls, the deployment scales back in after its
  delay, and no request is lost while the extra replicas drain;
- a deployment allowed to reach zero does, and a request to it then waits for a new replica and
  is answered within its deadline (the wait is recorded as a cold start);
- every policy the server cannot follow is refused with the reason, and nothing is written.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ServedControlPlane, wait_until
from kcloud.models.repository import ModelRepository
from tiny_models import build_model

INTERVAL_S = 0.2
#: The paced model's batcher waits this long for a batch it never fills (16 rows; the step has 12
#: clients), so each request is in flight at least this long whatever the machine's speed: the
#: step's requests in flight stay well above the 2 that scaling out to 3 needs, and the light
#: load's single client stays at or under the 1 that scaling in to 1 needs.
PACED_DELAY_MS = 40.0
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}



class Load:
    """`clients` threads each sending one request after another until `stop()`; every answer kept."""

    def __init__(self, url: str, name: str, clients: int) -> None:
        self.url, self.name = url, name
        self.statuses: Counter[int] = Counter()
        self.wrong: list[object] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(f"/v2/models/{self.name}/infer", json=BODY)
                    status = answer.status_code
                    ok = status != 200 or answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
                except httpx.HTTPError as exc:  # no answer at all: a lost request
                    status, ok = 0, False
                    answer = exc  # type: ignore[assignment]
                with self._lock:
                    self.statuses[status] += 1
                    if not ok:
                        self.wrong.append(answer)

    def stop(self) -> Counter[int]:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        return self.statuses


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """`small` (answers as fast as the machine can) and `paced` (holds each request ≥ PACED_DELAY_MS)."""
    repo = ModelRepository(tmp_path_factory.mktemp("autoscale-models") / "repo")
    build_model(repo, "small", memory_bytes=100 * 2**20)
    build_model(repo, "paced", memory_bytes=100 * 2**20, max_queue_delay_ms=PACED_DELAY_MS)
    return repo


@pytest.fixture(scope="module")
def server(module_db_url, repository, inventory) -> Iterator[ServedControlPlane]:
    with ServedControlPlane(repository, inventory, module_db_url, autoscale_interval_s=INTERVAL_S) as served:
        yield served


@pytest.fixture
def client(server: ServedControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def view(client: httpx.Client, name: str) -> dict:
    return client.get(f"/api/v1/deployments/{name}").json()


def running(client: httpx.Client, name: str) -> int:
    return view(client, name)["running"]


def events(client: httpx.Client, name: str, kind: str) -> list[dict]:
    return [e for e in client.get("/api/v1/events", params={"deployment": name, "limit": 1000}).json()
            if e["kind"] == kind]


@pytest.mark.slow
def test_a_step_scales_out_then_in_after_the_delay_losing_no_request(client, server) -> None:
    # a deployment of fixed size beside it: the autoscaler passes it by
    fixed = client.post("/api/v1/deployments", json={"model": "small", "name": "fixed", "replicas": 0})
    assert fixed.status_code == 201, fixed.text
    policy = {"min_replicas": 1, "max_replicas": 3, "target": 1, "stable_window_s": 2,
              "panic_window_s": 1, "downscale_delay_s": 2}
    created = client.post("/api/v1/deployments", json={
        "model": "paced", "name": "step", "constraints": {"vendor": "furiosa"}, "autoscale": policy})
    assert created.status_code == 201, created.text
    assert created.json()["replicas"] == 1  # starts at min_replicas
    wait_until(lambda: running(client, "step") == 1, 60, "the first replica")

    step = Load(server.url, "step", clients=12)
    try:
        wait_until(lambda: running(client, "step") == 3, 60, "scale-out to 3 under the step")
        scaled = events(client, "step", "autoscale.scaled")
        first = scaled[0]["data"]  # the decision's inputs: the metric over both windows, the target
        assert first["target"] == 1 and max(first["metric_stable"], first["metric_panic"]) > 1
    finally:
        statuses = step.stop()

    # light load goes on through the scale-in: every request is answered while two replicas drain
    light = Load(server.url, "step", clients=1)
    try:
        wait_until(lambda: view(client, "step")["replicas"] == 1, 30, "the scale-in decision")
        wait_until(lambda: len(view(client, "step")["replica_list"]) == 1, 60, "the drained replicas gone")
        time.sleep(0.5)
    finally:
        statuses += light.stop()
    assert statuses[0] == 0 and not light.wrong and not step.wrong
    assert set(statuses) <= {200, 429}, statuses  # 429: shed with Retry-After, never lost
    assert statuses[200] > 100
    stopped = events(client, "step", "replica.stopped")
    assert len(stopped) >= 2
    state = view(client, "step")["autoscaler"]
    assert state["metric"] == "ongoing" and state["target"] == 1 and state["last_decision"]


@pytest.mark.slow
def test_scale_to_zero_then_a_request_waits_for_a_replica_within_its_deadline(client, server) -> None:
    policy = {"min_replicas": 0, "max_replicas": 2, "target": 4, "stable_window_s": 1,
              "panic_window_s": 0.5, "downscale_delay_s": 0.5}
    created = client.post("/api/v1/deployments", json={
        "model": "small", "name": "cold", "replicas": 1, "constraints": {"vendor": "furiosa"},
        "autoscale": policy})
    assert created.status_code == 201, created.text
    # the first replica runs, unless the autoscaler, seeing no load for its 1.5 s of windows, has
    # already scaled a replica still starting to zero (a slow, loaded host): either is a start
    try:
        wait_until(lambda: running(client, "cold") == 1 or view(client, "cold")["replicas"] == 0, 60,
                   "the first replica")
    except pytest.fail.Exception:
        said = client.get("/api/v1/events", params={"deployment": "cold", "limit": 100}).json()
        pytest.fail(f"no replica of 'cold' ran in 60 s; its events: {said}")
    # idle: down to zero, and the name stays served
    wait_until(lambda: view(client, "cold")["replicas"] == 0 and not view(client, "cold")["replica_list"],
               30, "scale to zero")
    assert client.get("/v2/models/cold/ready").status_code == 200

    started = time.monotonic()
    answer = client.post("/v2/models/cold/infer", json=BODY, headers={"X-Request-Timeout-Ms": "30000"})
    waited = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert waited < 30
    cold = wait_until(lambda: events(client, "cold", "autoscale.cold_start"), 10, "the cold-start event")
    assert 0 < cold[-1]["data"]["cold_start_s"] <= waited
    assert view(client, "cold")["autoscaler"]["last_cold_start_s"] == cold[-1]["data"]["cold_start_s"]


@pytest.mark.slow
def test_a_cold_request_whose_deadline_passes_first_is_a_504(client, server) -> None:
    policy = {"min_replicas": 0, "max_replicas": 1, "stable_window_s": 1, "panic_window_s": 0.5,
              "downscale_delay_s": 0.5}
    created = client.post("/api/v1/deployments", json={
        "model": "small", "name": "late", "replicas": 0, "constraints": {"vendor": "furiosa"},
        "autoscale": policy})
    assert created.status_code == 201, created.text
    wait_until(lambda: client.get("/v2/models/late/ready").status_code == 200, 10, "standby")
    # 50 ms: less than a worker process takes to start and load the model
    answer = client.post("/v2/models/late/infer", json=BODY, headers={"X-Request-Timeout-Ms": "50"})
    assert answer.status_code == 504, answer.text
    assert "deadline" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"autoscale": {"min_replicas": 3, "max_replicas": 2}}, 400, "more than max_replicas"),
        ({"autoscale": {"min_replicas": -1}}, 400, "min_replicas"),
        ({"autoscale": {"max_replicas": -2}}, 400, "max_replicas"),
        ({"autoscale": {"target": 0}}, 400, "target"),
        ({"autoscale": {"downscale_delay_s": -1}}, 400, "downscale_delay_s"),
        ({"autoscale": {"stable_window_s": 0.1, "panic_window_s": 0.1}}, 422,
         "shorter than the interval the load is read at"),
        ({"autoscale": {"metric": "tokens", "target": 100}}, 422, "not a generative model"),
        ({"autoscale": {"metric": "p99"}}, 422, "SLO p99_latency_ms"),
        ({"autoscale": {"max_replicas": 2}, "replicas": 3}, 422, "within the autoscale bounds"),
    ],
)
def test_a_policy_the_server_cannot_follow_is_refused_and_nothing_is_written(
        client, body: dict, status: int, says: str) -> None:
    answer = client.post("/api/v1/deployments", json={"model": "small", "name": "bad"} | body)
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert client.get("/api/v1/deployments/bad").status_code == 404


def test_a_count_by_hand_on_an_autoscaled_deployment_is_a_conflict_until_autoscaling_is_off(
        client, server) -> None:
    created = client.post("/api/v1/deployments", json={
        "model": "small", "name": "manual", "replicas": 0, "constraints": {"vendor": "furiosa"},
        "autoscale": {"min_replicas": 0, "max_replicas": 2}})
    assert created.status_code == 201, created.text
    assert created.json()["autoscale"]["target"] == 16  # the model's max batch size
    refused = client.post("/api/v1/deployments/manual/scale", json={"replicas": 2})
    assert refused.status_code == 409 and "autoscale" in refused.json()["error"]
    refused = client.patch("/api/v1/deployments/manual", json={"replicas": 2})
    assert refused.status_code == 409
    off = client.patch("/api/v1/deployments/manual", json={"autoscale": None, "replicas": 0})
    assert off.status_code == 200, off.text
    assert off.json()["autoscale"] is None
    assert client.post("/api/v1/deployments/manual/scale", json={"replicas": 0}).status_code == 200
    kinds = [e["kind"] for e in client.get("/api/v1/events", params={"deployment": "manual"}).json()]
    assert "autoscale.off" in kinds
    assert "manual" not in {d.name for d in server.control.service.autoscaled()}
    assert client.delete("/api/v1/deployments/manual").status_code == 204
