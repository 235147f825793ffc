"""A model larger than any one device's memory is served as a pipeline over several devices.

`big-minilm` is the bundled MiniLM declaring 20 GiB of device memory, on a farm of Rebellions
ATOM (16 GiB each, emulated). No device holds it whole, so its deployment is split into the
fewest stages whose parts fit (two), placed on two devices, and served with the unsplit model's
outputs over OIP and the OpenAI embeddings route. Draining a stage's device moves the whole
replica. Real server on loopback, real worker processes (one per stage), both databases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from compiled_models import write_mlp_model
from conftest import LOCAL_NODE, ServedControlPlane, wait_until
from kcloud.cli import app
from kcloud.devices.inventory import Inventory
from kcloud.devices.plugins.cpu import CpuPlugin
from kcloud.models.pipelines import pipeline_for
from kcloud.models.repository import ModelRepository

GIB = 2**30
WIDE = {"COLUMNS": "250", "NO_COLOR": "1", "KCLOUD_API_KEY": ""}
ATOM_FARM = """
[farm]
name = "pipeline-test"

[[nodes]]
name = "npu-a"
devices = [{ chip = "rebellions-atom-ca22", count = 4 }]
"""
TEXTS = ["K-Cloud serves this on two devices", "a pipeline of stages", "short", "the fourth sentence"]


@pytest.fixture(scope="module")
def big_repository(builtin_repository, tmp_path_factory) -> ModelRepository:
    """MiniLM declared at 20 GiB and NPUs only (the host CPU could hold it whole); and a 3-node MLP."""
    root = tmp_path_factory.mktemp("pipeline-models")
    source = root / "src" / "big-minilm"
    shutil.copytree(builtin_repository.get("all-MiniLM-L6-v2").path.parent, source)
    config = (source / "config.toml").read_text()
    config = config.replace('name = "all-MiniLM-L6-v2"', 'name = "big-minilm"')
    config = config.replace("memory_bytes = 90258772", f"memory_bytes = {20 * GIB}")
    config = config.replace(
        'device_kinds = [\n    "cpu",\n    "gpu",\n    "npu",\n]', 'device_kinds = ["npu"]'
    )
    assert f"memory_bytes = {20 * GIB}" in config and 'device_kinds = ["npu"]' in config
    (source / "config.toml").write_text(config)
    repo = ModelRepository(root / "repo")
    repo.add(source)
    repo.add(write_mlp_model(root / "src", memory_bytes=20 * GIB))
    return repo


@pytest.fixture
def atom_inventory(tmp_path: Path):
    farm = tmp_path / "farm.toml"
    farm.write_text(ATOM_FARM)
    inventory = Inventory.build([farm], node=LOCAL_NODE, include_local=True, plugins=[CpuPlugin()])
    yield inventory
    inventory.close()


def _unsplit(repo: ModelRepository) -> np.ndarray:
    entry = repo.get("big-minilm")
    pipeline = pipeline_for(entry)
    feeds = pipeline.collate([pipeline.prepare({"text": np.array(TEXTS, dtype=object)})])
    session = ort.InferenceSession(str(entry.weights_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], feeds)[0]


@pytest.mark.slow
def test_a_model_larger_than_any_device_is_served_as_a_pipeline(db_url, big_repository, atom_inventory):
    expected = _unsplit(big_repository)
    with (
        ServedControlPlane(big_repository, atom_inventory, db_url) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        created = client.post("/api/v1/deployments", json={"model": "big-minilm", "name": "big"})
        assert created.status_code == 201, created.text
        pipeline = created.json()["pipeline"]
        assert pipeline["asked"] is None and len(pipeline["stages"]) == 2
        assert all(stage["memory_bytes"] <= 16 * GIB for stage in pipeline["stages"])
        assert sum(stage["memory_bytes"] for stage in pipeline["stages"]) >= 20 * GIB
        assert pipeline["cost_basis"].startswith("measured") and pipeline["balance"] < 1.6
        wait_until(lambda: client.get("/api/v1/deployments/big").json()["running"] == 1, 120, "the pipeline")

        # OIP: the pipeline's answer is the whole graph's, within floating-point tolerance.
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
        answer = client.post("/v2/models/big/infer", json=body)
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(len(TEXTS), -1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        # OpenAI embeddings route, same answer.
        openai = client.post("/v1/embeddings", json={"model": "big", "input": TEXTS})
        assert openai.status_code == 200, openai.text
        vectors = np.array([item["embedding"] for item in openai.json()["data"]], np.float32)
        np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)

        # Placement explain: the stages, their devices (distinct), and their balance.
        explain = client.get("/api/v1/deployments/big/placement").json()
        [replica] = explain["replicas"]
        first, second = replica["stage_devices"]
        assert first != second and replica["device"] == first
        assert "the FP32 graph in 2 stages" in replica["serves"]
        assert explain["pipeline"]["balance"] == pipeline["balance"]
        placement = explain["placements"][0]
        assert placement["reason"].startswith("placed 1 2-stage pipeline (balance")
        chosen = {c["device"]: c["reason"] for c in placement["candidates"] if c["chosen"]}
        assert chosen[first].startswith("stage 0: chosen") and chosen[second].startswith("stage 1: chosen")
        devices = {d["uid"]: d for d in client.get("/api/v1/devices").json()}
        assert devices[first]["memory_placed_bytes"] == pipeline["stages"][0]["memory_bytes"]
        assert devices[second]["memory_placed_bytes"] == pipeline["stages"][1]["memory_bytes"]

        # Failover over every stage: draining the second stage's device moves the whole replica.
        assert client.post(f"/api/v1/devices/{second}/drain", json={"reason": "test"}).status_code == 200

        def moved() -> list[str] | None:
            replicas = client.get("/api/v1/deployments/big").json()["replica_list"]
            running = [r for r in replicas if r["state"] == "running"]
            if len(replicas) == 1 and running and second not in running[0]["stage_devices"]:
                return running[0]["stage_devices"]
            return None

        wait_until(moved, 120, "the pipeline replica to move off the drained device")
        again = client.post("/v2/models/big/infer", json=body)
        assert again.status_code == 200, again.text
        got = np.array(again.json()["outputs"][0]["data"], np.float32).reshape(len(TEXTS), -1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_pipeline_requests_that_cannot_be_met_are_refused(db_url, big_repository, atom_inventory):
    with (
        ServedControlPlane(big_repository, atom_inventory, db_url) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        too_many = client.post("/api/v1/deployments", json={"model": "mlp", "stages": 5})
        assert too_many.status_code == 422, too_many.text
        assert "can be cut into at most 3 stages" in too_many.text and "asked for 5" in too_many.text
        int8 = client.post(
            "/api/v1/deployments", json={"model": "mlp", "stages": 2, "constraints": {"precision": "int8"}}
        )
        assert int8.status_code == 422 and "a pipeline serves the FP32 graph" in int8.text
        # Asked for: its two weights (2 KiB, 1 KiB) split its 20 GiB as 2/3 and 1/3, each within 16 GiB.
        two = client.post("/api/v1/deployments", json={"model": "mlp", "stages": 2, "name": "two"})
        assert two.status_code == 201, two.text
        memory = [s["memory_bytes"] for s in two.json()["pipeline"]["stages"]]
        assert memory == [int(np.ceil(20 * GIB * 2 / 3)), int(np.ceil(20 * GIB / 3))]
        cli = CliRunner().invoke(
            app,
            ["deploy", "create", "mlp", "--name", "three", "--stages", "3", "--no-wait", "--url", server.url],
            env=WIDE,
        )
        assert cli.exit_code == 0, cli.output
        assert "pipeline: 3 stages (3 asked), balance" in cli.output
        explained = CliRunner().invoke(app, ["placement", "explain", "two", "--url", server.url], env=WIDE)
        assert explained.exit_code == 0, explained.output
        assert "pipeline: 2 stages (2 asked)" in explained.output and "stage 1: " in explained.output
        assert "2-stage pipeline (balance" in explained.output
        idle = client.post(
            "/api/v1/deployments", json={"model": "mlp", "stages": 2, "replicas": 0, "name": "idle"}
        )
        assert idle.status_code == 201 and idle.json()["pipeline"] is not None, idle.text
        zero = client.post("/api/v1/deployments", json={"model": "mlp", "stages": 0, "name": "zero"})
        assert zero.status_code == 400 and "stages" in zero.text  # a schema error, as every field's
        whole = client.post(
            "/api/v1/deployments",
            json={"model": "mlp", "stages": 1, "name": "whole", "constraints": {"vendor": "rebellions"}},
        )
        assert whole.status_code == 201 and whole.json()["pipeline"] is None
        assert "not enough free memory" in whole.json()["reason"]
