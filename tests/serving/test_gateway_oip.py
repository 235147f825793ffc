"""The Open Inference Protocol v2 routes of the real gateway, on loopback, with real models.

Checked against KServe's `required_api.md` (paths, bodies, "200 true / 4xx false" health) and
Triton's `extension_binary_data.md` (binary tensors both ways, per-output `binary_data`,
`binary_data_output`, `Inference-Header-Content-Length`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from kcloud.serving.oip import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    decode_infer_response,
    encode_infer_request,
    parse_header_length,
)

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits-cnn"
NOOP = "noop"


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway()


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def _decode(response: httpx.Response) -> tuple[dict[str, np.ndarray], dict]:
    assert response.status_code == 200, response.text
    length = parse_header_length(response.headers.get(INFERENCE_HEADER_CONTENT_LENGTH))
    return decode_infer_response(response.content, length)


def _digits_sample(builtin_repository, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(builtin_repository.get(DIGITS).model_dir / "digits-test.npz")
    return data["input.image"][:n], data["reference"][:n]


def test_server_metadata_names_the_binary_extension(client):
    body = client.get("/v2").json()
    assert body["name"] == "kcloud"
    assert body["version"]
    assert "binary_tensor_data" in body["extensions"]


def test_health_live_and_ready(client):
    live = client.get("/v2/health/live")
    ready = client.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


@pytest.mark.parametrize("path", [f"/v2/models/{MINILM}", f"/v2/models/{MINILM}/versions/1"])
def test_model_metadata(client, path):
    body = client.get(path).json()
    assert body == {
        "name": MINILM,
        "versions": ["1"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }


@pytest.mark.parametrize("path", [f"/v2/models/{DIGITS}/ready", f"/v2/models/{DIGITS}/versions/1/ready"])
def test_model_ready(client, path):
    response = client.get(path)
    assert (response.status_code, response.json()) == (200, {"name": DIGITS, "ready": True})


def test_infer_json_nested_data_echoes_id(client, builtin_repository):
    images, labels = _digits_sample(builtin_repository, 8)
    request = {
        "id": "req-42",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                    "data": images.tolist()}],  # nested, as the spec allows
    }
    response = client.post(f"/v2/models/{DIGITS}/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "req-42"
    assert (body["model_name"], body["model_version"]) == (DIGITS, "1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [8, 10]
    assert outputs["label"]["datatype"] == "INT64"
    predicted = np.array(outputs["label"]["data"])
    assert (predicted == labels).mean() >= 0.75  # the trained CNN, not an echo


def test_infer_binary_both_ways_matches_json(client):
    texts = np.array([b"The gateway speaks OIP v2.", "한국어 문장도 됩니다.".encode()], dtype=object)
    body, headers = encode_infer_request({"text": texts}, binary=True, binary_outputs=True)
    response = client.post(f"/v2/models/{MINILM}/infer", content=body, headers=headers)
    assert response.headers["content-type"] == "application/octet-stream"
    outputs, doc = _decode(response)
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 2 * 384 * 4
    embedding = outputs["embedding"]
    assert embedding.shape == (2, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)

    json_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                             "data": [t.decode() for t in texts]}]}
    as_json = client.post(f"/v2/models/{MINILM}/infer", json=json_body).json()
    np.testing.assert_allclose(np.array(as_json["outputs"][0]["data"]).reshape(2, 384), embedding, atol=1e-6)


def test_output_selection_and_per_output_binary(client, builtin_repository):
    images, _ = _digits_sample(builtin_repository, 3)
    body, headers = encode_infer_request(
        {"image": images}, binary=True, outputs=["label"], binary_outputs=False)
    outputs, doc = _decode(client.post(f"/v2/models/{DIGITS}/infer", content=body, headers=headers))
    assert list(outputs) == ["label"]
    assert "data" in doc["outputs"][0]  # asked for JSON

    request = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                    "data": images.ravel().tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
    }
    outputs, doc = _decode(client.post(f"/v2/models/{DIGITS}/infer", json=request))
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert by_name["probabilities"]["parameters"]["binary_data_size"] == 3 * 10 * 4
    assert "data" in by_name["label"]
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_binary_data_output_parameter(client):
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    request = {"parameters": {"binary_data_output": True},
               "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 16],
                           "data": x.ravel().tolist()}]}
    outputs, doc = _decode(client.post(f"/v2/models/{NOOP}/versions/1/infer", json=request))
    assert doc["model_version"] == "1"
    assert "binary_data_size" in doc["outputs"][0]["parameters"]
    np.testing.assert_array_equal(outputs["output"], x)


def test_expired_deadline_is_504_and_never_computed(client):
    request = {"parameters": {"timeout": 1},  # microseconds, as tritonclient sends it
               "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
    response = client.post(f"/v2/models/{NOOP}/infer", json=request)
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]


@pytest.mark.parametrize("header", ["soon", "-5", "0"])
def test_bad_timeout_header_is_400(client, header):
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
    response = client.post(f"/v2/models/{NOOP}/infer", json=request, headers={"X-Request-Timeout-Ms": header})
    assert response.status_code == 400
    assert "X-Request-Timeout-Ms" in response.json()["error"]


def test_generous_timeout_header_serves(client):
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}
    response = client.post(f"/v2/models/{NOOP}/infer", json=request,
                           headers={"X-Request-Timeout-Ms": "30000"})
    assert response.status_code == 200, response.text


def test_unknown_route_and_method(client):
    missing = client.get("/v2/nothing/here")
    assert missing.status_code == 404 and "no such route" in missing.json()["error"]
    wrong = client.get(f"/v2/models/{NOOP}/infer")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_metrics_expose_serving_and_device_figures(client):
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    assert client.post(f"/v2/models/{NOOP}/infer", json=request).status_code == 200
    assert client.post("/v2/models/not-a-model/infer", json=request).status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'kcloud_requests_total{model="noop",protocol="oip",version="1"}' in text
    assert 'kcloud_request_errors_total{code="404",model=""}' in text
    for family in ("kcloud_request_seconds_bucket", "kcloud_queue_seconds_bucket",
                   "kcloud_compute_seconds_bucket", "kcloud_batch_rows_bucket", "kcloud_queue_depth",
                   "kcloud_device_info"):
        assert family in text, family


def test_openapi_documents_both_protocols(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v2", "/v2/models/{model}", "/v2/models/{model}/ready", "/v2/models/{model}/infer",
                 "/v2/models/{model}/versions/{version}/infer", "/v1/embeddings", "/v1/models"):
        assert path in spec["paths"], path
    infer_doc = spec["paths"]["/v2/models/{model}/infer"]["post"]
    assert "Inference-Header-Content-Length" in infer_doc["description"]
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------- overload and lost replicas
@pytest.fixture(scope="module")
def small_queue_repository(builtin_repository, tmp_path_factory):
    """noop, plus `noop-q1`: the same graph behind a queue of one that waits 1 s to fill a batch."""
    from kcloud.models.repository import ModelRepository

    noop = builtin_repository.get(NOOP)
    source = tmp_path_factory.mktemp("noop-q1")
    (source / "1").mkdir()
    (source / "1" / "model.onnx").write_bytes(noop.weights_path.read_bytes())
    (source / "config.toml").write_text(
        'name = "noop-q1"\n'
        '[[inputs]]\nname = "input"\ndatatype = "FP32"\nshape = [-1, 16]\n'
        '[[outputs]]\nname = "output"\ndatatype = "FP32"\nshape = [-1, 16]\n'
        "[batching]\nmax_batch_size = 64\nmax_queue_delay_ms = 1000.0\nqueue_limit = 1\n"
    )
    repository = ModelRepository(tmp_path_factory.mktemp("repo"))
    repository.add(noop.model_dir)
    repository.add(source)
    return repository


@pytest.fixture(scope="module")
def small_queue_gateway(start_gateway, small_queue_repository):
    return start_gateway(repository=small_queue_repository)


def test_full_queue_sheds_with_429_and_retry_after(small_queue_gateway):
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16}]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue_gateway.url, timeout=30) as http:
            return await asyncio.gather(
                *(http.post("/v2/models/noop-q1/infer", json=request) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert set(codes) <= {200, 429}
    shed = next(r for r in responses if r.status_code == 429)
    assert int(shed.headers["retry-after"]) >= 1
    assert "queue full" in shed.json()["error"]
    # nothing acknowledged was lost: every 200 carries its own answer
    for response in responses:
        if response.status_code == 200:
            assert response.json()["outputs"][0]["data"] == [2.0] * 16


def test_a_dead_replica_is_replaced_and_its_model_never_vanishes(small_queue_gateway):
    """The control plane owns the bundled models' replicas too: a killed worker is replaced. Until
    the replacement serves, the model is unready (400) and inference answers 503, never 404."""
    url = small_queue_gateway.url
    router = small_queue_gateway.stack.router
    (replica,) = router.replicas(NOOP)
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGKILL)
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/v2/models/{NOOP}/ready")
        assert ready.status_code in (200, 400), ready.text
        response = httpx.post(f"{url}/v2/models/{NOOP}/infer", json=request)
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert "no live replica" in response.json()["error"] or "died" in response.json()["error"]
        seen.add(response.status_code)
        (now,) = router.replicas(NOOP) or (None,)
        if now is not None and now.id != replica.id and response.status_code == 200:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"no replacement served within 60 s (answers seen: {sorted(seen)})")
    assert not replica.alive
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    # the other model is untouched
    assert httpx.get(f"{url}/v2/models/noop-q1/ready").status_code == 200


def test_stop_is_graceful_for_requests_in_flight(start_gateway, small_queue_repository):
    gateway = start_gateway(repository=small_queue_repository, models=["noop-q1"])
    (replica,) = gateway.stack.router.replicas("noop-q1")
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [7.0] * 16}]}
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{gateway.url}/v2/models/noop-q1/infer", json=request, timeout=30)))
    sender.start()
    deadline = time.monotonic() + 10
    while replica.load == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the request waits in the replica's queue (1 s batching delay)
    assert replica.load == 1
    gateway.stop()  # as Ctrl-C: stop accepting, finish what is in flight, drain, end workers
    sender.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["outputs"][0]["data"] == [7.0] * 16
    assert not replica.alive
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.url}/v2/health/live", timeout=2)


def test_thread_isolation_serves_the_same(start_gateway):
    gateway = start_gateway(models=[NOOP], isolation="thread")
    (replica,) = gateway.stack.router.replicas(NOOP)
    assert replica.isolation == "thread" and replica.pid is None
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    body, headers = encode_infer_request({"input": x})
    outputs, _ = _decode(httpx.post(f"{gateway.url}/v2/models/{NOOP}/infer", content=body, headers=headers))
    np.testing.assert_array_equal(outputs["output"], x)
