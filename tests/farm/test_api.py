"""The admin API over real HTTP (uvicorn on loopback), on both databases.

Each kind of bad input gets a test: a clear `{"error": ...}` with its status, nothing written,
and the server still answering afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from conftest import ServedControlPlane
from kcloud.farm.controlplane import attach
from kcloud.serving.router import Router
from kcloud.store.db import DatabaseUnavailableError, SchemaMismatchError, open_database


@pytest.fixture(scope="module")
def server(module_db_url, repository, inventory) -> Iterator[ServedControlPlane]:
    with ServedControlPlane(repository, inventory, module_db_url, isolation="thread") as served:
        yield served


@pytest.fixture
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as client:
        yield client


def wait_for(api: httpx.Client, name: str, status: str, timeout_s: float = 30) -> dict:
    """Poll the deployment until it reaches `status` (the reconciler works in the background)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        view = api.get(f"/deployments/{name}").json()
        if view["status"] == status or time.monotonic() > deadline:
            return view
        time.sleep(0.1)


def snapshot(api: httpx.Client) -> tuple:
    return (
        api.get("/deployments").json(),
        [e["id"] for e in api.get("/events", params={"limit": 1000}).json()],
    )


def test_openapi_documents_the_admin_api(server):
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in (
        "/api/v1/deployments",
        "/api/v1/deployments/{name}",
        "/api/v1/deployments/{name}/scale",
        "/api/v1/deployments/{name}/placement",
        "/api/v1/devices",
        "/api/v1/devices/{uid}/drain",
        "/api/v1/devices/{uid}/undrain",
        "/api/v1/events",
    ):
        assert path in paths, path


def test_create_show_scale_update_explain_delete(api, server):
    created = api.post(
        "/deployments",
        json={"model": "small", "name": "crud", "replicas": 1, "constraints": {"vendor": "furiosa"}},
    )
    assert created.status_code == 201, created.text
    assert created.json()["replica_list"][0]["device"].startswith("npu-a/rngd")
    view = wait_for(api, "crud", "ready")
    assert view["running"] == 1 and view["replica_list"][0]["emulated"] is True
    answer = httpx.post(
        f"{server.url}/v2/models/crud/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
    )
    assert answer.json()["outputs"][0]["data"] == [2, 4, 6, 8]

    scaled = api.post("/deployments/crud/scale", json={"replicas": 2})
    assert scaled.status_code == 200 and scaled.json()["replicas"] == 2
    assert wait_for(api, "crud", "ready")["running"] == 2

    updated = api.patch("/deployments/crud", json={"policy": "binpack"})
    assert updated.status_code == 200 and updated.json()["generation"] == 2
    explain = api.get("/deployments/crud/placement").json()
    assert explain["placements"][0]["trigger"] == "update"
    assert all(c["reason"] for c in explain["placements"][0]["candidates"])

    assert api.delete("/deployments/crud").status_code == 204
    missing = api.get("/deployments/crud")
    assert missing.status_code == 404 and missing.json() == {"error": "deployment 'crud' not found"}
    kinds = [e["kind"] for e in api.get("/events", params={"deployment": "crud"}).json()]
    assert kinds[0] == "deployment.created" and kinds[-1] in ("deployment.deleted", "replica.stopped")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope"}, 404, "model 'nope' not found in the repository"),
        ({"model": "small", "replicas": -1}, 400, "replicas: Input should be greater than or equal to 0"),
        (
            {"model": "small", "constraints": {"vendor": "furiosa", "chip": "rebellions-atom-ca22"}},
            422,
            "chip rebellions-atom-ca22 is made by rebellions, not furiosa",
        ),
        ({"model": "small", "constraints": {"chip": "no-such-chip"}}, 422, "unknown chip 'no-such-chip'"),
        ({"model": "small", "constraints": {"precision": "fp4"}}, 400, "constraints.precision"),
        ({"model": "small", "surprise": 1}, 400, "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(api, body, status, message):
    before = snapshot(api)
    answer = api.post("/deployments", json=body)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert snapshot(api) == before
    assert api.get("/deployments").status_code == 200  # still up


def test_a_duplicate_name_is_a_conflict(api):
    assert (
        api.post("/deployments", json={"model": "cpu-only", "name": "dup", "replicas": 0}).status_code == 201
    )
    before = snapshot(api)
    again = api.post("/deployments", json={"model": "small", "name": "dup"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    assert snapshot(api) == before
    assert api.delete("/deployments/dup").status_code == 204


def test_impossible_constraints_are_accepted_as_pending_with_the_reason(api):
    answer = api.post(
        "/deployments",
        json={"model": "big", "name": "too-big", "replicas": 1, "constraints": {"vendor": "rebellions"}},
    )
    assert answer.status_code == 201
    view = answer.json()
    assert view["status"] == "pending"
    assert "not enough free memory (needs 20.0 GiB; largest free 16.0 GiB)" in view["reason"]
    assert api.post("/deployments/too-big/scale", json={"replicas": -2}).status_code == 400
    assert api.get("/deployments/too-big").json()["replicas"] == 1
    assert api.delete("/deployments/too-big").status_code == 204


def test_drain_and_undrain_a_device_over_the_api(api):
    devices = {d["uid"]: d for d in api.get("/devices").json()}
    assert devices["npu-b/x220-0"]["emulated"] is True and devices["host/cpu0"]["emulated"] is False
    drained = api.post("/devices/npu-b/x220-0/drain", json={"reason": "fan replaced"})
    assert drained.status_code == 200
    assert drained.json()["drained"] and drained.json()["drain_reason"] == "fan replaced"
    events = api.get("/events", params={"device": "npu-b/x220-0"}).json()
    assert events[-1]["kind"] == "device.drained"
    assert api.post("/devices/npu-b/x220-0/undrain").json()["drained"] is False
    unknown = api.post("/devices/nowhere/dev9/drain")
    assert unknown.status_code == 404 and "device 'nowhere/dev9' not found" in unknown.json()["error"]


def test_a_database_that_does_not_connect_fails_before_the_api_exists(repository, inventory):
    app = FastAPI()
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to database"):
        asyncio.run(attach(app, Router(repository), inventory, "postgresql://postgres@127.0.0.1:1/none"))
    assert not [r for r in app.routes if getattr(r, "path", "").startswith("/api/v1")]


def test_a_schema_that_does_not_match_the_migrations_fails_before_the_api_exists(
    db_url, repository, inventory
):
    import sqlalchemy as sa

    open_database(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE deployments DROP COLUMN status_reason")
    engine.dispose()
    app = FastAPI()
    with pytest.raises(SchemaMismatchError, match=r"column deployments\.status_reason is missing"):
        asyncio.run(attach(app, Router(repository), inventory, db_url))
    assert not [r for r in app.routes if getattr(r, "path", "").startswith("/api/v1")]
