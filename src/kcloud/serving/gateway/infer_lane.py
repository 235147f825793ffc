"""OIP inference on raw ASGI: the gateway's hot path, without the framework's routing layers.

Every request passes FastAPI's outer layers and the gateway-wide middleware (authentication,
the body cap). `InferLane` is the innermost middleware: it answers
`POST /v2/models/{model}[/versions/{version}]/infer` itself and hands every other request on to
FastAPI's router. An inference request so skips what the documented JSON routes need and
inference does not: the exception middleware, the exit-stack middleware, matching against every
route, Starlette's `Request` and `Response` objects, and two more wrappers around `send`.

Everything that can go wrong is answered here in the protocol's shape (`{"error": "..."}`, via
`errors.error_response`), as the exception handlers would; the OpenAPI document still lists these paths
(`oip_routes.metadata_router`'s documentation routes, which this lane keeps from being reached).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from kcloud.serving.gateway.deadline import TIMEOUT_HEADER, deadline_from
from kcloud.serving.gateway.encoding import decoded_body
from kcloud.serving.gateway.errors import CLIENT_CLOSED_REQUEST, as_kcloud_error, send_error
from kcloud.serving.gateway.oip_routes import parse_version
from kcloud.serving.gateway.state import GatewayState
from kcloud.serving.oip import (
    check_requested_outputs,
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
)
from kcloud.serving.served import ServedModel

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
#: The request headers inference reads, found in one pass over the header list.
_WANTED = {
    b"content-encoding": "content-encoding",
    b"inference-header-content-length": "inference-header-content-length",
    TIMEOUT_HEADER.encode(): TIMEOUT_HEADER,
}


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version text or None) when `path` is an inference path, else None.

    The same paths as the routes `/v2/models/{model}/infer` and
    `/v2/models/{model}/versions/{version}/infer` (a parameter is one non-empty path segment).
    """
    if not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def route_path(scope: Scope) -> str:
    """The path the routes match: without the app's mount prefix (`root_path`), when the server
    includes it in `path` (as newer ASGI servers and Starlette do) and when it does not."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


class ClientGone(Exception):
    """The client closed the connection before its whole body arrived."""


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the body cap is the middleware's outside this one)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferLane:
    """Answers OIP inference requests; passes everything else to `app`."""

    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(route_path(scope))
            if target is not None:
                await self.infer(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version_text: str | None
    ) -> None:
        """POST /v2/models/{model}[/versions/{version}]/infer."""
        state = self.state
        path: str = scope["path"]
        started = time.perf_counter()
        served: ServedModel | None = None
        try:
            version = parse_version(name, version_text)
            served = state.router.served(name, version)
            headers: dict[str, str] = {}
            for key, value in scope["headers"]:
                wanted = _WANTED.get(key)
                if wanted is not None:
                    headers[wanted] = value.decode("latin-1")
            raw_body = await read_body(receive)
            body = decoded_body(raw_body, headers.get("content-encoding"), state.max_body_bytes)
            header_length = parse_header_length(headers.get("inference-header-content-length"))
            config = served.config
            decoded = decode_infer_request(body, header_length, max_elements=config.max_request_elements(),
                                           limit=config.request_limit_words())
            if decoded.outputs is not None:
                check_requested_outputs(decoded, (o.name for o in served.config.outputs), name)
            deadline = deadline_from(decoded.parameters, headers)
            outcome = await state.router.infer(served.name, served.version, decoded.inputs, deadline=deadline)
            payload, response_headers = encode_infer_response(
                model_name=served.name,
                model_version=str(served.version),
                request_id=decoded.id,
                outputs=outcome.outputs,
                request=decoded,
            )
        except ClientGone:
            self._failed(served, CLIENT_CLOSED_REQUEST)  # nobody is left to answer
            return
        except Exception as exc:
            error = as_kcloud_error(path, exc)
            self._failed(served, error.status)
            await send_error(send, path, error)
            return
        state.observer.served(served, "oip", outcome.device_uid, time.perf_counter() - started)
        raw_headers = [(b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in response_headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    def _failed(self, served: ServedModel | None, status: int) -> None:
        if served is None:
            self.state.observer.failed("", status)
        else:
            self.state.observer.failed(served.name, status, version=served.version)
