"""A deployment that asks for a precision is served from the compiled artifact its device needs:
compiled on first use, shown by placement explain, refused with the gate's reason when the
build misses it. Real server on loopback, real worker processes, both databases."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from compiled_models import mlp_weights, write_mlp_model
from conftest import ServedControlPlane, wait_until
from kcloud.models.repository import ModelRepository


@pytest.fixture
def compiled_repository(tmp_path: Path) -> ModelRepository:
    """Per test, so that each database's run compiles on first use."""
    root = tmp_path
    repo = ModelRepository(root / "repo")
    repo.add(write_mlp_model(root / "src"))
    repo.add(write_mlp_model(root / "src", "strict", ratio=1.0))
    repo.add(write_mlp_model(root / "src", "bare", dataset=False))
    return repo


def _infer(client: httpx.Client, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(len(x), -1)


@pytest.mark.slow
def test_int8_deployment_serves_the_compiled_artifact(db_url, compiled_repository, inventory, tmp_path: Path):
    with (
        ServedControlPlane(compiled_repository, inventory, db_url) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        created = client.post(
            "/api/v1/deployments",
            json={
                "model": "mlp",
                "name": "mlp-int8",
                "replicas": 1,
                "constraints": {"precision": "int8", "chip": "furiosa-rngd"},
            },
        )
        assert created.status_code == 201, created.text
        wait_until(lambda: client.get("/api/v1/deployments/mlp-int8").json()["running"] == 1, 90, "a replica")

        x = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
        w1, w2 = mlp_weights()
        fp32 = np.maximum(x @ w1, 0) @ w2
        got = _infer(client, "mlp-int8", x)
        cosine = (got * fp32).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(fp32, axis=1)
        assert cosine.min() > 0.99 and not np.allclose(got, fp32, rtol=1e-6, atol=1e-6)  # INT8, not FP32

        explain = client.get("/api/v1/deployments/mlp-int8/placement").json()
        [replica] = explain["replicas"]
        assert replica["artifact"]["target"] == "cpu-int8"
        assert (
            "int8 asked: onnxruntime-cpu on" in replica["serves"]
            and "compiled on first use" in replica["serves"]
        )
        chosen = [c for c in explain["placements"][0]["candidates"] if c["chosen"]]
        assert "serves the cpu-int8 artifact (onnxruntime-cpu runs int8 as cpu-int8)" in chosen[0]["reason"]

        # A build that misses the gate: the replica does not start, and the deployment says why.
        refused = client.post(
            "/api/v1/deployments",
            json={
                "model": "strict",
                "name": "strict-int8",
                "replicas": 1,
                "constraints": {"precision": "int8", "chip": "furiosa-rngd"},
            },
        )
        assert refused.status_code == 201, refused.text

        def failed_start() -> str | None:
            events = client.get("/api/v1/events", params={"deployment": "strict-int8"}).json()
            return next((e["message"] for e in events if "misses the accuracy gate" in e["message"]), None)

        message = wait_until(failed_start, 120, "the refused build to be reported")
        assert "model strict version 1: cpu-int8 misses the accuracy gate by" in message
        assert client.get("/api/v1/deployments/strict-int8").json()["running"] == 0


def test_a_precision_that_cannot_be_compiled_is_refused_at_once(db_url, compiled_repository, inventory):
    with (
        ServedControlPlane(compiled_repository, inventory, db_url) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        refused = client.post(
            "/api/v1/deployments",
            json={"model": "bare", "name": "bare-int8", "constraints": {"precision": "int8"}},
        )
        assert refused.status_code == 422, refused.text
        assert "has no calibration data (config key `accuracy.dataset`)" in refused.text
        assert (
            client.post(
                "/api/v1/deployments",
                json={"model": "bare", "name": "bare-fp32", "constraints": {"precision": "fp32"}},
            ).status_code
            == 201
        )
        patched = client.patch("/api/v1/deployments/bare-fp32", json={"constraints": {"precision": "fp16"}})
        assert patched.status_code == 422 and "fp16 artifact cannot be compiled" in patched.text
