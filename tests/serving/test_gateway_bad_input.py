"""Bad input never hurts: each kind gets a 4xx with a clear `{"error": ...}`, and right after it
the same server still answers another client correctly (issue 3, "Bad input")."""

from __future__ import annotations

import gzip
import logging
import socket
import time

import httpx
import numpy as np
import pytest

from kcloud.serving.oip import encode_infer_request

MINILM = "all-MiniLM-L6-v2"
NOOP = "noop"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway(max_body_bytes=LIMIT, models=[NOOP, MINILM])


@pytest.fixture
def post(gateway):
    """POST to a path and return the response, then check the server still serves someone else."""
    with httpx.Client(base_url=gateway.url, timeout=30) as http:

        def send(path: str, **kwargs) -> httpx.Response:
            response = http.post(path, **kwargs)
            _still_serves(gateway.url)
            return response

        yield send


def _still_serves(url: str) -> None:
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    body, headers = encode_infer_request({"input": x}, binary=True)
    with httpx.Client(base_url=url, timeout=30) as other:  # a new connection: another client
        response = other.post(f"/v2/models/{NOOP}/infer", content=body, headers=headers)
        assert response.status_code == 200, response.text
        fresh = other.post(f"/v2/models/{MINILM}/infer", json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["still here"]}]})
        assert fresh.status_code == 200, fresh.text


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def _noop(data, shape=(1, 16), datatype="FP32", name="input") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": data}]}


def test_malformed_json(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", content=b'{"inputs": [', headers={
        "content-type": "application/json"}), 400)
    assert "JSON" in message


def test_empty_body(post):
    _error(post(f"/v2/models/{NOOP}/infer", content=b""), 400)


def test_wrong_datatype(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", json=_noop([1] * 16, datatype="INT32")), 400)
    assert "INT32" in message and "FP32" in message


def test_unknown_datatype(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", json=_noop([1.0] * 16, datatype="FLOAT")), 400)
    assert "FLOAT" in message


def test_shape_and_data_length_disagree(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", json=_noop([1.0] * 15)), 400)
    assert "15" in message and "16" in message


def test_shape_does_not_fit_the_model(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", json=_noop([1.0] * 8, shape=(1, 8))), 400)
    assert "input" in message


def test_missing_input(post):
    message = _error(post(f"/v2/models/{MINILM}/infer", json=_noop([1.0] * 16, name="not-text")), 400)
    assert "text" in message


def test_extra_input(post):
    request = _noop([1.0] * 16)
    request["inputs"].append({"name": "surplus", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16})
    message = _error(post(f"/v2/models/{NOOP}/infer", json=request), 400)
    assert "surplus" in message


def test_duplicate_input(post):
    request = _noop([1.0] * 16)
    request["inputs"].append(request["inputs"][0])
    _error(post(f"/v2/models/{NOOP}/infer", json=request), 400)


def test_empty_input_list(post):
    message = _error(post(f"/v2/models/{NOOP}/infer", json={"inputs": []}), 400)
    assert "inputs" in message


def test_zero_rows(post):
    _error(post(f"/v2/models/{NOOP}/infer", json=_noop([], shape=(0, 16))), 400)


def test_batch_larger_than_the_model_allows(post):
    rows = 65  # noop's max_batch_size is 64
    message = _error(post(f"/v2/models/{NOOP}/infer", json=_noop([0.0] * 16 * rows, shape=(rows, 16))), 400)
    assert "64" in message


def test_unknown_requested_output(post):
    request = _noop([1.0] * 16)
    request["outputs"] = [{"name": "logits"}]
    message = _error(post(f"/v2/models/{NOOP}/infer", json=request), 400)
    assert "logits" in message


def test_non_utf8_bytes_to_a_text_model(post):
    body, headers = encode_infer_request({"text": np.array([b"ok", b"\xff\xfe broken"], dtype=object)})
    message = _error(post(f"/v2/models/{MINILM}/infer", content=body, headers=headers), 400)
    assert "UTF-8" in message


def test_binary_sizes_that_do_not_add_up(post):
    body, headers = encode_infer_request({"input": np.zeros((1, 16), np.float32)})
    _error(post(f"/v2/models/{NOOP}/infer", content=body[:-4], headers=headers), 400)
    headers["Inference-Header-Content-Length"] = "not-a-number"
    _error(post(f"/v2/models/{NOOP}/infer", content=body, headers=headers), 400)
    headers["Inference-Header-Content-Length"] = str(len(body) + 10)
    _error(post(f"/v2/models/{NOOP}/infer", content=body, headers=headers), 400)


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", "/v2/models/nope", "/v2/models/nope/ready"])
def test_unknown_model_is_404(post, gateway, path):
    if path.endswith("infer"):
        message = _error(post(path, json=_noop([1.0] * 16)), 404)
    else:
        message = _error(httpx.get(gateway.url + path), 404)
    assert "nope" in message


@pytest.mark.parametrize("version", ["2", "abc", "0"])
def test_unknown_version_is_404(post, gateway, version):
    _error(post(f"/v2/models/{NOOP}/versions/{version}/infer", json=_noop([1.0] * 16)), 404)
    _error(httpx.get(f"{gateway.url}/v2/models/{NOOP}/versions/{version}"), 404)


def test_oversize_body_by_content_length_is_413(post):
    body = b"x" * (LIMIT + 1)
    response = post(f"/v2/models/{NOOP}/infer", content=body, headers={"content-type": "application/json"})
    message = _error(response, 413)
    assert str(LIMIT) in message
    assert response.headers.get("connection") == "close"


def test_oversize_streamed_body_is_413(post):
    def chunks():  # no Content-Length: sent chunked, so the cap must hold while reading
        for _ in range(5):
            yield b" " * (16 * 1024)

    message = _error(post(f"/v2/models/{NOOP}/infer", content=chunks()), 413)
    assert str(LIMIT) in message


def test_body_under_the_limit_streamed_is_served(post):
    body, headers = encode_infer_request({"input": np.ones((4, 16), np.float32)}, binary=False)

    def chunks():
        yield body[:10]
        yield body[10:]

    response = post(f"/v2/models/{NOOP}/infer", content=chunks(), headers=headers)
    assert response.status_code == 200, response.text


def test_compression_bomb_is_413(post):
    bomb = gzip.compress(b"[" * (LIMIT * 4))  # a few hundred bytes that inflate past the limit
    assert len(bomb) < LIMIT
    response = post(f"/v2/models/{NOOP}/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert str(LIMIT) in _error(response, 413)


def test_corrupt_or_unknown_compression(post):
    path = f"/v2/models/{NOOP}/infer"
    _error(post(path, content=b"not gzip at all", headers={"content-encoding": "gzip"}), 400)
    body, headers = encode_infer_request({"input": np.zeros((1, 16), np.float32)})
    truncated = gzip.compress(body)[:-12]
    _error(post(path, content=truncated, headers={**headers, "content-encoding": "gzip"}), 400)
    message = _error(post(path, content=body, headers={**headers, "content-encoding": "br"}), 415)
    assert "br" in message


def test_client_hanging_up_mid_body_is_not_a_server_error(gateway, caplog):
    host, port = "127.0.0.1", gateway.port
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"POST /v2/models/{NOOP}/infer HTTP/1.1\r\nHost: {host}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"".encode())
    counted = 'kcloud_request_errors_total{code="499",model="noop"}'
    deadline = time.monotonic() + 10
    while counted not in httpx.get(f"{gateway.url}/metrics").text and time.monotonic() < deadline:
        time.sleep(0.05)  # the hang-up is noticed asynchronously; poll the server's own count
    assert counted in httpx.get(f"{gateway.url}/metrics").text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("kcloud")]
    _still_serves(gateway.url)
