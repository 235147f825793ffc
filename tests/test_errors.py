"""One error model (issue 14, part 5): every refusal is a `KcloudError`, translated to HTTP in one
place (`kcloud.serving.gateway.errors.error_response`), so the FastAPI routes and the raw-ASGI
inference lane answer the same error with the same status, body and headers.

The translation is checked kind by kind, then on a real gateway app (`create_app`) served by
uvicorn on loopback, whose router refuses with the error under test: the same error leaves once
by a FastAPI route (`GET /v2/models/{m}/ready`, the exception handlers), once by the inference
lane (`POST /v2/models/{m}/infer`) and once by the OpenAI embeddings route.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

import kcloud
from kcloud.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    KcloudError,
    NotFoundError,
    UnprocessableError,
)
from kcloud.farm import errors as farm_errors
from kcloud.farm.errors import BadNameError, ControlPlaneError, InvalidSpecError, UnknownModelError
from kcloud.models.errors import ModelNotFoundError
from kcloud.models.pipeline import InputError
from kcloud.models.repository import ModelRepository
from kcloud.serving.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    ModelNotReadyError,
    QueueFullError,
    ReplicaDiedError,
    ServingError,
)
from kcloud.serving.gateway.app import create_app
from kcloud.serving.gateway.errors import (
    BodyTooLargeError,
    UnsupportedMediaTypeError,
    as_kcloud_error,
    error_response,
)
from kcloud.serving.http_server import Server, bind_socket, serve_app
from kcloud.serving.oip.errors import CodecError
from kcloud.serving.router import Router
from kcloud.serving.served import ServedModel
from kcloud.tenancy.errors import QuotaExceededError

SRC = Path(kcloud.__file__).parent


def _quota() -> QuotaExceededError:
    return QuotaExceededError("quota exceeded: tenant 'acme' would hold 3 replicas; its quota allows 2",
                              limit="max_replicas", allowed=2, requested=3)


#: (error, status, the `{"error": ...}` body, headers it must carry) for every kind.
KINDS: list[tuple[KcloudError, int, dict[str, object], dict[str, str]]] = [
    (InvalidRequestError("bad"), 400, {"error": "bad"}, {}),
    (ForbiddenError("not yours"), 403, {"error": "not yours"}, {}),
    (NotFoundError("no such thing"), 404, {"error": "no such thing"}, {}),
    (ConflictError("taken"), 409, {"error": "taken"}, {}),
    (UnprocessableError("never"), 422, {"error": "never"}, {}),
    (UnknownModelError("model 'x' not found"), 404, {"error": "model 'x' not found"}, {}),
    (BadNameError("bad name"), 400, {"error": "bad name"}, {}),
    (InvalidSpecError("constraints.chip: unknown"), 422, {"error": "constraints.chip: unknown"}, {}),
    (_quota(), 403, {"error": "quota exceeded: tenant 'acme' would hold 3 replicas; its quota allows 2",
                     "limit": "max_replicas", "allowed": 2, "requested": 3}, {}),
    (QueueFullError("queue full", retry_after_s=2.2), 429, {"error": "queue full"}, {"retry-after": "3"}),
    (QueueFullError("queue full", retry_after_s=0.01), 429, {"error": "queue full"}, {"retry-after": "1"}),
    (ModelNotReadyError("no live replica"), 503, {"error": "no live replica"}, {}),
    (ReplicaDiedError("worker died"), 503, {"error": "worker died"}, {}),
    (DeadlineExceededError("deadline passed"), 504, {"error": "deadline passed"}, {}),
    (InferenceFailedError("runtime failed"), 500, {"error": "runtime failed"}, {}),
    (BodyTooLargeError(10, 20), 413,
     {"error": "request body too large: 20 bytes is over the limit of 10 bytes"}, {"connection": "close"}),
    (UnsupportedMediaTypeError("Content-Encoding 'br' is not supported"), 415,
     {"error": "Content-Encoding 'br' is not supported"}, {}),
    (ModelNotFoundError("model 'm' not found"), 404, {"error": "model 'm' not found"}, {}),
    (InputError("input `x` is missing"), 400, {"error": "input `x` is missing"}, {}),
    (CodecError("inputs[0] has no 'datatype'"), 400, {"error": "inputs[0] has no 'datatype'"}, {}),
]
IDS = [f"{type(k[0]).__name__}-{k[1]}" for k in KINDS]


@pytest.mark.parametrize(("error", "status", "body", "headers"), KINDS, ids=IDS)
def test_each_kind_translates_to_its_status_body_and_headers(error, status, body, headers) -> None:
    answer = error_response(error, "/v2/models/m/infer")
    assert answer.status == status
    assert orjson.loads(answer.body) == body
    assert answer.headers == headers
    # The admin API's paths take the same shape (quota fields included).
    assert error_response(error, "/api/v1/deployments").body == answer.body


@pytest.mark.parametrize(("error", "status", "body", "headers"), KINDS, ids=IDS)
def test_openai_paths_get_openais_error_object_without_extra_fields(error, status, body, headers) -> None:
    answer = error_response(error, "/v1/embeddings")
    kind = {403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if status == 404 else None
    assert orjson.loads(answer.body) == {
        "error": {"message": body["error"], "type": kind, "param": None, "code": code}
    }
    assert (answer.status, answer.headers) == (status, headers)


def test_a_fault_of_ours_is_a_logged_500_that_names_no_internals(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="kcloud.serving.gateway.errors"):
        error = as_kcloud_error("/v2/models/m/infer", RuntimeError("secret detail"))
    answer = error_response(error)
    assert answer.status == 500
    assert orjson.loads(answer.body) == {"error": "internal server error (RuntimeError); see the server log"}
    assert any(record.exc_info for record in caplog.records), "the traceback must reach the log"
    known = NotFoundError("x")
    assert as_kcloud_error("/", known) is known


def test_package_errors_are_the_shared_kinds() -> None:
    """A caller catches one class whichever package refused."""
    assert farm_errors.NotFoundError is NotFoundError and farm_errors.ConflictError is ConflictError
    assert isinstance(UnknownModelError("x"), NotFoundError | ControlPlaneError)
    assert isinstance(BadNameError("x"), InvalidRequestError | ControlPlaneError)
    assert isinstance(InvalidSpecError("x"), UnprocessableError | ControlPlaneError)
    assert isinstance(_quota(), ForbiddenError)
    assert isinstance(ModelNotFoundError("x"), NotFoundError)
    assert isinstance(ModelNotFoundError("x"), LookupError)
    assert isinstance(InputError("x"), InvalidRequestError) and isinstance(InputError("x"), ValueError)
    assert isinstance(CodecError("x"), InvalidRequestError) and isinstance(CodecError("x"), ValueError)
    assert issubclass(ServingError, KcloudError)


def _classes_defined_in_src() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(str(path.relative_to(SRC)))
    return where


def test_one_name_one_thing() -> None:
    defined = _classes_defined_in_src()
    assert defined["NotFoundError"] == ["errors.py"]
    assert defined["ConflictError"] == ["errors.py"]
    assert defined["KcloudError"] == ["errors.py"]
    assert defined["Node"] == ["devices/inventory.py"]
    assert defined["NodeRow"] == ["farm/schema.py"]


def test_the_error_model_imports_nothing_of_kcloud() -> None:
    tree = ast.parse((SRC / "errors.py").read_text())
    imported = [
        name for node in ast.walk(tree)
        for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    ]
    assert imported and not [name for name in imported if name.startswith("kcloud")]


# ------------------------------------------------------------------ the same error, by every lane


class RefusingRouter(Router):
    """A router whose every lookup fails with `refusal`: what the routes see before any compute."""

    refusal: BaseException = NotFoundError("unset")

    def served(self, name: str, version: int | None = None) -> ServedModel:
        raise self.refusal


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RefusingRouter]]:
    """`create_app` over a `RefusingRouter`, served by uvicorn on a loopback port."""
    router = RefusingRouter(ModelRepository(tmp_path_factory.mktemp("empty-repository")))
    app = create_app(router, inventory=None)
    sock = bind_socket("127.0.0.1", 0)
    servers: list[Server] = []
    listening = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(serve_app(app, sock, on_listening=listening.set,
                                             server_ready=servers.append)),
        daemon=True,
    )
    thread.start()
    assert listening.wait(30), "the gateway did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", router
    servers[0].should_exit = True
    thread.join(30)
    sock.close()


def _lanes(url: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    return {
        "fastapi": lambda http: http.get(f"{url}/v2/models/m/ready"),
        "raw lane": lambda http: http.post(f"{url}/v2/models/m/infer", json=body),
    }


#: The headers an error may add, compared between the lanes.
_ERROR_HEADERS = ("retry-after", "connection", "content-type")


@pytest.mark.parametrize(("error", "status", "body", "headers"), KINDS, ids=IDS)
def test_fastapi_and_the_raw_lane_answer_the_same_error_alike(gateway, error, status, body, headers) -> None:
    url, router = gateway
    router.refusal = error
    answers = {}
    for lane, ask in _lanes(url).items():
        with httpx.Client(timeout=30) as http:
            response = ask(http)
        assert response.status_code == status, (lane, response.text)
        assert response.json() == body, lane
        assert response.headers["content-type"] == "application/json", lane
        for name, value in headers.items():
            assert response.headers.get(name) == value, (lane, name)
        answers[lane] = (response.content, {h: response.headers.get(h) for h in _ERROR_HEADERS})
    assert answers["fastapi"] == answers["raw lane"]


def test_the_openai_route_answers_through_the_same_translation(gateway) -> None:
    url, router = gateway
    router.refusal = QueueFullError("queue full", retry_after_s=1.5)
    with httpx.Client(timeout=30) as http:
        response = http.post(f"{url}/v1/embeddings", json={"model": "m", "input": "hello"})
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.content == error_response(router.refusal, "/v1/embeddings").body


def test_an_unexpected_fault_is_the_same_500_on_both_lanes(gateway, caplog) -> None:
    url, router = gateway
    router.refusal = RuntimeError("a bug of ours")
    answers = []
    for ask in _lanes(url).values():
        # A connection of its own each: the server closes one after an exception in the app.
        with caplog.at_level(logging.ERROR, logger="kcloud.serving.gateway.errors"), \
                httpx.Client(timeout=30) as http:
            answers.append(ask(http))
    assert [a.status_code for a in answers] == [500, 500]
    assert any(record.exc_info for record in caplog.records)
    assert answers[0].content == answers[1].content
    assert answers[0].json() == {"error": "internal server error (RuntimeError); see the server log"}
    assert "a bug of ours" not in answers[0].text
