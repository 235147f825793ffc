"""The one translation from a `kcloud.errors.KcloudError` to its HTTP answer, in the shape each
protocol expects.

`error_response` is the only place an error becomes a status, a body and headers: the FastAPI
exception handlers (`install_error_handlers`, registered once by `create_app`), the raw-ASGI
inference lane and middleware (`send_error`) and the OpenAI routes all answer through it, so a
refusal reads the same whichever lane it left by. Open Inference Protocol routes and the admin
API answer `{"error": "..."}` plus the fields the error carries (a quota's numbers); OpenAI routes
answer `{"error": {"message", "type", "param", "code"}}`, which the official `openai` client parses
into its typed exceptions. A client's mistake is always a 4xx with a message naming what is wrong;
only an unexpected fault of ours is a 500, and that one is logged with its traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Send

from kcloud.errors import InvalidRequestError, KcloudError

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
#: Counted (not sent: the client is gone) when a client hangs up before its body arrived, as nginx does.
CLIENT_CLOSED_REQUEST = 499


class BodyTooLargeError(KcloudError):
    """The request body is over the gateway's cap (413).

    The connection is closed after the answer: the client may still be sending the body we refused.
    """

    status = 413

    def __init__(self, limit: int, size: int | None = None) -> None:
        told = f"{size} bytes" if size is not None else "the body"
        super().__init__(f"request body too large: {told} is over the limit of {limit} bytes",
                         headers={"connection": "close"})
        self.limit = limit
        self.size = size


class UnsupportedMediaTypeError(KcloudError):
    """A body in an encoding the gateway cannot read (415)."""

    status = 415


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What goes on the wire for one error: status, JSON body and headers (content type aside)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers,
                        media_type="application/json")

    async def send(self, send: Send) -> None:
        """The same answer on raw ASGI, for middleware and the inference lane."""
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        for key, value in self.headers.items():
            raw.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(
    path: str, status: int, message: str, *, code: str | None = None, fields: dict[str, Any] | None = None
) -> bytes:
    """The JSON error body for `path`'s protocol.

    OpenAI's error object has fixed keys, so `fields` go only into the `{"error": ...}` shape,
    but for `param` (the request field at fault), which is one of OpenAI's keys.
    Public for the HTTP protocol layer, which refuses a connection before any app (or
    exception) exists.
    """
    if path.startswith(OPENAI_PREFIX):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        if code is None and status == 404 and path.startswith(f"{OPENAI_PREFIX}embeddings"):
            code = "model_not_found"
        param = (fields or {}).get("param")
        return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})
    return orjson.dumps({"error": message, **(fields or {})})


def error_response(exc: KcloudError, path: str = "") -> ErrorAnswer:
    """The HTTP answer to `exc` on `path` (whose prefix picks the protocol's body shape)."""
    body = error_body(path, exc.status, exc.message, fields=exc.fields)
    return ErrorAnswer(exc.status, body, dict(exc.headers))


def as_kcloud_error(path: str, exc: BaseException) -> KcloudError:
    """`exc` itself when it is a `KcloudError`; otherwise a fault of ours: logged with its
    traceback, and answered as a 500 that names the kind of fault but no internals."""
    if isinstance(exc, KcloudError):
        return exc
    log.error("unexpected error serving %s", path, exc_info=exc)
    return KcloudError(f"internal server error ({type(exc).__name__}); see the server log", status=500)


def exception_response(path: str, exc: BaseException) -> Response:
    """Any exception's answer as a Starlette `Response` (a 500 for what is not a `KcloudError`)."""
    return error_response(as_kcloud_error(path, exc), path).response()


async def send_error(send: Send, path: str, exc: KcloudError) -> None:
    """`exc`'s answer on raw ASGI, for the middleware and the inference lane."""
    await error_response(exc, path).send(send)


#: pydantic's error types for a body that is not a JSON object at all (or is missing).
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type", "missing"})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        if tuple(err.get("loc", ())) == ("body",):
            if err.get("type") in _NOT_AN_OBJECT:
                return "request body must be a JSON object (send Content-Type: application/json)"
            parts.append(str(err.get("msg")))  # a check of the whole body: its message names the field
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure through `error_response`, so no route answers in another shape.

    The framework's own refusals (a body that fails validation, an unknown route, a wrong
    method) become `KcloudError`s first; anything else is the logged 500.
    """

    async def known(request: Request, exc: Exception) -> Response:
        return exception_response(request.url.path, exc)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return exception_response(request.url.path, InvalidRequestError(_validation_message(exc)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        refusal = KcloudError(message, status=exc.status_code, headers=exc.headers)
        return exception_response(request.url.path, refusal)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # the client hung up mid-body; nobody reads this

    app.add_exception_handler(KcloudError, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, known)
