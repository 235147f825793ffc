"""OpenAI `POST /v1/chat/completions` and `POST /v1/completions`, passed through to LLM engines,
and the Open Inference Protocol's generate extension (`/v2/models/{name}/generate[_stream]`).

The body is the client's own, checked (`kcloud.serving.generation.prepare_call`: fields the
engine understands, messages, the context) and then sent on unchanged but for `model` and an
explicit `max_tokens`; the engine's answer comes back unchanged, streamed event by event when
the client asked for a stream (`kcloud.serving.engine_calls`). So every sampling and output
parameter the engine supports (temperature, top_p, stop, seed, n, logprobs, response_format with
a JSON schema, tools) reaches it as the client wrote it.

Errors before the engine are OpenAI-shaped 4xx answers (`{"error": {...}}`); an engine's own
refusal (say, a temperature it rejects) is passed back with its status.

The generate extension (Triton's `docs/protocol/extension_generate.md`) is for OIP users: its
`{"text_input", "parameters"}` becomes a completion request (the parameters are completion
fields, checked the same way), and the answer `{"model_name", "model_version", "text_output"}`,
one JSON object or one server-sent event per engine chunk; errors are OIP's `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kcloud.errors import InvalidRequestError
from kcloud.serving.engine import EngineReplica
from kcloud.serving.engine_calls import Answer, StreamAnswer
from kcloud.serving.errors import ModelNotReadyError
from kcloud.serving.gateway.errors import as_kcloud_error, error_response
from kcloud.serving.gateway.openai_schemas import OpenAIError
from kcloud.serving.gateway.request_line import ARRIVED
from kcloud.serving.gateway.state import GatewayState, gateway_state
from kcloud.serving.generation import Route, heavy, loaded_tokenizer, prepare_call, tokenizer_for
from kcloud.serving.served import ServedModel

_ERRORS = {
    400: {"model": OpenAIError, "description": "bad request (named field, context exceeded, ...)"},
    404: {"model": OpenAIError, "description": "unknown model"},
    429: {"model": OpenAIError, "description": "over a token or request quota; see Retry-After"},
    503: {"model": OpenAIError, "description": "no live engine replica"},
}
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model"], "additionalProperties": True,
    "description": "OpenAI's request body; every field the serving engine supports is passed through.",
}}}}}


class RelayResponse(StreamingResponse):
    """A relayed engine stream that is closed whatever happens to the client's connection."""

    def __init__(self, answer: StreamAnswer, events: AsyncIterator[bytes] | None = None) -> None:
        super().__init__(events if events is not None else answer.events(), media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.answer.close()


def _engine_of(state: GatewayState, served: ServedModel) -> EngineReplica:
    """A live engine replica of `served`, for what its engine accepts (a deployment's replicas
    run one runtime; 503 when none is alive)."""
    engines = [r for r in state.router.replicas(served.name)
               if isinstance(r, EngineReplica) and r.served.key == served.key]
    for replica in engines:
        if replica.alive:
            return replica
    raise ModelNotReadyError(f"model {served.name} v{served.version} has no live engine replica")


def _parse(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("`model` is required: a model served here (see GET /v1/models)",
                                  fields={"param": "model"})
    return body


async def _send(state: GatewayState, route: Route, body: dict, arrived: float | None,
                version: int | None = None) -> tuple[ServedModel, EngineReplica, Answer | StreamAnswer]:
    """Check `body` for its model's engine and send it; the model, the engine asked what it
    accepts, and the answer. Raises the refusals (`KcloudError`). `arrived`: when the request
    reached the gateway (`request_line.ARRIVED`); a stream reports the gateway's own part of its
    first token to `kcloud_llm_gateway_first_token_seconds`."""
    served = state.router.served(body["model"], version)  # 404 for a model the caller cannot see
    if not served.config.generative:
        raise InvalidRequestError(
            f"model {served.name!r} is not a generative model: it is served on /v2 and /v1/embeddings",
            fields={"param": "model"})
    engine = _engine_of(state, served)
    accepted = engine.runtime.accepted_params(route)
    # Loaded when the engine started (`warm_tokenizer`); a thread only if it somehow was not.
    tokenizer = loaded_tokenizer(served.entry) or await asyncio.to_thread(tokenizer_for, served.entry)
    if heavy(body):
        call = await asyncio.to_thread(prepare_call, route, body, served, accepted, engine.runtime.name,
                                       tokenizer)
    else:
        call = prepare_call(route, body, served, accepted, engine.runtime.name, tokenizer)
    call.arrived_at = arrived
    answer = await state.router.generate(call)
    if isinstance(answer, StreamAnswer):
        answer.on_first_token.append(state.metrics.llm_first_token_added_seconds.labels(served.name).observe)
    return served, engine, answer


async def _openai(request: Request, route: Route) -> Response:
    state = gateway_state(request)
    started = time.perf_counter()
    name = ""
    try:
        body = _parse(await request.body())
        name = body["model"]
        served, engine, answer = await _send(state, route, body, request.scope.get(ARRIVED))
    except Exception as exc:
        error = as_kcloud_error(request.url.path, exc)
        state.observer.failed(name, error.status, protocol="openai")
        return error_response(error, request.url.path).response()
    if isinstance(answer, StreamAnswer):
        state.observer.served(served, "openai", engine.device.uid, time.perf_counter() - started)
        return RelayResponse(answer)
    if answer.status == 200:
        state.observer.served(served, "openai", engine.device.uid, time.perf_counter() - started)
    else:
        state.observer.failed(served.name, answer.status, version=served.version, protocol="openai")
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _generate_body(raw: bytes, name: str, stream: bool) -> dict:
    """The completion request an OIP generate request stands for."""
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("text_input"), str):
        raise InvalidRequestError('a generate request is {"text_input": string, "parameters": object}')
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError("`parameters` must be an object of name: value pairs")
    unknown = sorted(set(request) - {"text_input", "parameters"})
    if unknown:
        raise InvalidRequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                  "sampling settings go in `parameters`")
    clash = sorted({"model", "prompt", "stream", "stream_options"} & set(parameters))
    if clash:
        raise InvalidRequestError(f"`parameters` may not set {', '.join(clash)}: the URL and the route do")
    return {**parameters, "model": name, "prompt": request["text_input"], "stream": stream}


def _text_of(payload: bytes) -> str:
    choices = orjson.loads(payload).get("choices") or [{}]
    return "".join(str(c.get("text") or "") for c in choices)


async def _oip_events(answer: StreamAnswer, name: str, version: str) -> AsyncIterator[bytes]:
    """The engine's completion chunks as OIP generate responses, one event each."""
    async for events in answer.events():
        for event in events.split(b"\n\n"):
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            data = orjson.loads(event[6:])
            if "error" in data:
                error = data["error"]
                message = error.get("message") if isinstance(error, dict) else error
                yield b"data: " + orjson.dumps({"error": message}) + b"\n\n"
            elif data.get("choices"):
                yield b"data: " + orjson.dumps({"model_name": name, "model_version": version,
                                                "text_output": _text_of(event[6:])}) + b"\n\n"


async def _oip_generate(request: Request, name: str, version: int | None, stream: bool) -> Response:
    state = gateway_state(request)
    started = time.perf_counter()
    try:
        body = _generate_body(await request.body(), name, stream)
        served, engine, answer = await _send(state, "completions", body, request.scope.get(ARRIVED), version)
    except Exception as exc:
        error = as_kcloud_error(request.url.path, exc)
        state.observer.failed(name, error.status)
        return error_response(error, request.url.path).response()
    served_as = (served.name, str(served.version))
    if isinstance(answer, StreamAnswer):
        state.observer.served(served, "oip", engine.device.uid, time.perf_counter() - started)
        return RelayResponse(answer, _oip_events(answer, *served_as))
    if answer.status != 200:
        state.observer.failed(served.name, answer.status, version=served.version)
        try:
            message = orjson.loads(answer.body)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = answer.body.decode("utf-8", "replace")
        return Response(orjson.dumps({"error": message}), status_code=answer.status,
                        media_type="application/json")
    state.observer.served(served, "oip", engine.device.uid, time.perf_counter() - started)
    return Response(orjson.dumps({"model_name": served_as[0], "model_version": served_as[1],
                                  "text_output": _text_of(answer.body)}), media_type="application/json")


def llm_router() -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @api.post("/chat/completions", summary="Create a chat completion (streamed with `stream: true`)",
              responses=_ERRORS, openapi_extra=_BODY_DOC)
    async def chat_completions(request: Request) -> Response:
        return await _openai(request, "chat")

    @api.post("/completions", summary="Create a completion (streamed with `stream: true`)",
              responses=_ERRORS, openapi_extra=_BODY_DOC)
    async def completions(request: Request) -> Response:
        return await _openai(request, "completions")

    return api


def generate_router() -> APIRouter:
    """OIP v2's generate extension, for generative models."""
    api = APIRouter(prefix="/v2/models", tags=["Open Inference Protocol v2"])
    refusals = {status: {"description": what["description"]} for status, what in _ERRORS.items()}
    doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["text_input"],
        "properties": {"text_input": {"type": "string"}, "parameters": {"type": "object"}}}}}}}

    def handler(stream: bool) -> Callable[..., Awaitable[Response]]:
        async def generate(request: Request, name: str, version: int | None = None) -> Response:
            return await _oip_generate(request, name, version, stream=stream)
        return generate

    for route, stream, summary in (("generate", False, "Generate text (OIP generate extension)"),
                                   ("generate_stream", True, "Generate text as server-sent events")):
        for path in ("/{name}", "/{name}/versions/{version}"):
            api.add_api_route(f"{path}/{route}", handler(stream), methods=["POST"], summary=summary,
                              responses=refusals, openapi_extra=doc, name=f"{route}{path.count('/')}")
    return api
