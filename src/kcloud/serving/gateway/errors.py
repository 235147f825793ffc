"""One mapping from what went wrong to the HTTP answer, in the shape each protocol expects.

Open Inference Protocol routes answer `{"error": "..."}` (KServe `required_api.md`); OpenAI routes
answer `{"error": {"message", "type", "param", "code"}}`, which the official `openai` client
parses into its typed exceptions. A client's mistake is always a 4xx with a message naming what
is wrong; only an unexpected fault of ours is a 500, and that one is logged with its traceback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Send

from kcloud.models.errors import ModelNotFoundError
from kcloud.models.pipeline import InputError
from kcloud.serving.errors import QueueFullError, ServingError
from kcloud.serving.oip.errors import CodecError

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
#: Counted (not sent: the client is gone) when a client hangs up before its body arrived, as nginx does.
CLIENT_CLOSED_REQUEST = 499


class BodyTooLargeError(Exception):
    """The request body is over the gateway's cap; answered with 413."""

    status = 413

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        told = f"{size} bytes" if size is not None else "the body"
        super().__init__(f"request body too large: {told} is over the limit of {limit} bytes")


class ClientError(Exception):
    """A gateway-level refusal (unknown output, bad parameter) with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


def classify(exc: BaseException) -> ErrorReply | None:
    """The answer for a known failure; `None` means an unexpected fault (a 500)."""
    if isinstance(exc, QueueFullError):
        retry = max(1, math.ceil(exc.retry_after_s))
        return ErrorReply(429, str(exc) or "queue full", {"retry-after": str(retry)})
    if isinstance(exc, ServingError | ClientError | BodyTooLargeError):
        return ErrorReply(exc.status, str(exc) or type(exc).__name__)
    if isinstance(exc, InputError | CodecError):
        return ErrorReply(400, str(exc))
    if isinstance(exc, ModelNotFoundError):
        return ErrorReply(404, _strip_key_quotes(exc))
    return None


def _strip_key_quotes(exc: LookupError) -> str:
    # str(KeyError("x")) quotes its message; LookupError subclasses may do the same.
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(path: str, status: int, message: str, *, code: str | None = None) -> bytes:
    """The JSON error body for `path`'s protocol."""
    if path.startswith(OPENAI_PREFIX):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        if code is None and status == 404 and path.startswith(f"{OPENAI_PREFIX}embeddings"):
            code = "model_not_found"
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return orjson.dumps({"error": message})


def unexpected_reply(path: str, exc: BaseException) -> ErrorReply:
    """A 500 for a fault of ours: logged with its traceback, answered without internals."""
    log.error("unexpected error serving %s", path, exc_info=exc)
    return ErrorReply(500, f"internal server error ({type(exc).__name__}); see the server log")


def reply_for(path: str, exc: BaseException) -> ErrorReply:
    """`classify`'s answer, or the 500 of `unexpected_reply`."""
    reply = classify(exc)
    return reply if reply is not None else unexpected_reply(path, exc)


def _headers(reply: ErrorReply) -> dict[str, str]:
    headers = dict(reply.headers)
    if reply.status == 413:
        headers["connection"] = "close"  # the client may still be sending the body we refused
    return headers


def error_response(path: str, reply: ErrorReply) -> Response:
    return Response(
        error_body(path, reply.status, reply.message),
        status_code=reply.status,
        headers=_headers(reply),
        media_type="application/json",
    )


def unexpected_error_response(path: str, exc: BaseException) -> Response:
    return error_response(path, unexpected_reply(path, exc))


def exception_response(path: str, exc: BaseException) -> Response:
    return error_response(path, reply_for(path, exc))


async def send_error(send: Send, path: str, reply: ErrorReply) -> None:
    """`error_response` on raw ASGI, for the middleware and the inference lane."""
    body = error_body(path, reply.status, reply.message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for key, value in _headers(reply).items():
        raw.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


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
    """Route every failure through `classify`, so no route answers in another shape."""

    async def known(request: Request, exc: Exception) -> Response:
        return exception_response(request.url.path, exc)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(request.url.path, ErrorReply(400, _validation_message(exc)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        return error_response(request.url.path, ErrorReply(exc.status_code, message, exc.headers or {}))

    async def unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_error_response(request.url.path, exc)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # the client hung up mid-body; nobody reads this


    for kind in (ServingError, ClientError, BodyTooLargeError, InputError, CodecError, ModelNotFoundError):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, unexpected)
