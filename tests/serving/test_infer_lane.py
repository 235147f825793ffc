"""The inference lane: which paths it answers, and that what it answers is what the routes would.

Every OIP inference test in this folder goes through the lane; these check its own edges: the
paths it claims and those it leaves to FastAPI, a fault of ours inside it (500 in the protocol's
shape, logged, the server still serving), and the route table it leaves behind.
"""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest

from kcloud.serving.gateway import infer_lane
from kcloud.serving.gateway.infer_lane import infer_target, route_path
from kcloud.serving.oip import encode_infer_request

NOOP = "noop"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/noop/infer", ("noop", None)),
        ("/v2/models/noop/versions/3/infer", ("noop", "3")),
        ("/v2/models/noop/versions/x/infer", ("noop", "x")),  # a bad version is the route's 404
        ("/v2/models/all-MiniLM-L6-v2/infer", ("all-MiniLM-L6-v2", None)),
        ("/v2/models//infer", None),
        ("/v2/models/noop/versions//infer", None),
        ("/v2/models/noop/infer/", None),
        ("/v2/models/noop/ready", None),
        ("/v2/models/noop", None),
        ("/v2/models/a/b/infer", None),
        ("/v2/models/a/b/c/d/infer", None),
        ("/v2/models/noop/other/3/infer", None),
        ("/v1/embeddings", None),
        ("/v2/models/infer", None),
    ],
)
def test_infer_target_claims_exactly_the_inference_routes(path, target):
    assert infer_target(path) == target


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v2/models/noop/infer", "", "/v2/models/noop/infer"),
        ("/kcloud/v2/models/noop/infer", "/kcloud", "/v2/models/noop/infer"),  # root_path inside path
        ("/v2/models/noop/infer", "/kcloud", "/v2/models/noop/infer"),  # older servers: path without it
    ],
)
def test_route_path_drops_a_mount_prefix(path, root_path, expected):
    assert route_path({"path": path, "root_path": root_path}) == expected


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway(models=[NOOP])


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def _noop_request() -> tuple[bytes, dict[str, str]]:
    return encode_infer_request({"input": np.ones((1, 16), np.float32)}, binary=False)


def test_a_fault_inside_the_lane_is_a_logged_500_and_the_server_goes_on(client, monkeypatch, caplog):
    def broken(**_: object) -> None:
        raise RuntimeError("encoder bug")

    body, headers = _noop_request()
    monkeypatch.setattr(infer_lane, "encode_infer_response", broken)
    with caplog.at_level(logging.ERROR, logger="kcloud"):
        response = client.post(f"/v2/models/{NOOP}/infer", content=body, headers=headers)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "internal server error (RuntimeError); see the server log"}
    assert any("encoder bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    monkeypatch.undo()
    assert client.post(f"/v2/models/{NOOP}/infer", content=body, headers=headers).status_code == 200
    metrics = client.get("/metrics").text
    assert 'kcloud_request_errors_total{code="500",model="noop"} 1.0' in metrics


def test_paths_the_lane_leaves_are_answered_by_the_routes(client):
    body, headers = _noop_request()
    slash = client.post(f"/v2/models/{NOOP}/infer/", content=body, headers=headers)
    assert slash.status_code in (307, 404)  # FastAPI's answer to a trailing slash, not the lane's
    wrong_method = client.put(f"/v2/models/{NOOP}/infer", content=body, headers=headers)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_the_response_carries_its_length_and_protocol_headers(client):
    body, headers = encode_infer_request({"input": np.ones((2, 16), np.float32)}, binary=True,
                                         binary_outputs=True)
    response = client.post(f"/v2/models/{NOOP}/infer", content=body, headers=headers)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    assert header_length + 2 * 16 * 4 == len(response.content)
