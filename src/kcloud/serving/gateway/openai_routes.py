"""OpenAI-compatible `GET /v1/models` and `POST /v1/embeddings` (chat and completions: `llm_routes`).

Answers are exactly what the official `openai` client parses (`CreateEmbeddingResponse`,
`SyncPage[Model]`); errors use OpenAI's `{"error": {"message", "type", "param", "code"}}` so the
client raises its typed exceptions with our message. `usage` counts the tokens the model's own
tokenizer produced (the pipeline reports them), not a guess from characters.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from kcloud.errors import InvalidRequestError
from kcloud.serving.gateway.deadline import deadline_from
from kcloud.serving.gateway.errors import as_kcloud_error, error_response
from kcloud.serving.gateway.openai_schemas import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    OpenAIError,
)
from kcloud.serving.gateway.state import GatewayState, gateway_state
from kcloud.serving.served import ServedModel

OWNER = "kcloud"
EMBEDDING_KIND = "sentence-embedding"

_ERRORS = {
    400: {"model": OpenAIError, "description": "bad request"},
    404: {"model": OpenAIError, "description": "unknown model"},
    429: {"model": OpenAIError, "description": "queue full; see Retry-After"},
}


def _created(served: ServedModel) -> int:
    """When this version landed in the repository (its directory's modification time)."""
    try:
        return int(served.entry.path.stat().st_mtime)
    except OSError:
        return 0


def is_embedding_model(served: ServedModel) -> bool:
    return served.config.processing.kind == EMBEDDING_KIND


def _texts(body: EmbeddingRequest) -> list[str]:
    raw = body.input
    if isinstance(raw, str):
        texts = [raw]
    else:
        if not raw:
            raise InvalidRequestError("'input' is an empty list; send a string or a list of strings")
        if not all(isinstance(item, str) for item in raw):
            raise InvalidRequestError("'input' holds token ids; this server embeds text only: send strings")
        texts = list(raw)  # type: ignore[arg-type]
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(
            f"'input' has {len(texts)} strings; at most {MAX_EMBEDDING_INPUTS} per request")
    for index, text in enumerate(texts):
        if not text:
            where = "'input'" if isinstance(raw, str) else f"'input[{index}]'"
            raise InvalidRequestError(f"{where} is an empty string; there is nothing to embed")
    return texts


def _embedding_model(state: GatewayState, name: str) -> ServedModel:
    served = state.router.served(name)  # ModelNotFoundError -> 404
    if not is_embedding_model(served):
        embedders = sorted({e.name for e in state.router.served_models() if is_embedding_model(e)})
        listed = ", ".join(embedders) or "none"
        raise InvalidRequestError(
            f"model '{name}' is not an embedding model (embedding models here: {listed})")
    return served


def _output_name(served: ServedModel) -> str:
    # An embedding model has one public output, the vectors (e.g. `embedding` FP32 [-1, 384]).
    return served.config.outputs[0].name


def _input_name(served: ServedModel) -> str:
    return served.config.inputs[0].name


def _token_count(extra: dict) -> int:
    # The text pipeline reports the tokens its tokenizer made (per row); a model that does not
    # is a bug of ours, and a KeyError here surfaces it as a logged 500 rather than a made-up 0.
    return int(np.sum(extra["tokens"]))


def _encode_rows(vectors: np.ndarray, encoding: str, first_index: int) -> list[dict]:
    if encoding == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        return [
            {"object": "embedding", "index": first_index + i,
             "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(little)
        ]
    as_float = np.asarray(vectors, dtype=np.float32)
    return [{"object": "embedding", "index": first_index + i, "embedding": row}
            for i, row in enumerate(as_float)]


def openai_router() -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @api.get("/models", response_model=ModelList, summary="List models")
    async def list_models(request: Request) -> dict:
        models = gateway_state(request).router.served_models()
        latest: dict[str, ServedModel] = {}
        for served in models:
            if served.name not in latest or served.version > latest[served.name].version:
                latest[served.name] = served
        return {
            "object": "list",
            "data": [
                {"id": e.name, "object": "model", "created": _created(e), "owned_by": OWNER,
                 "context_length": e.config.generation.context_length if e.config.generation else None}
                for e in sorted(latest.values(), key=lambda e: e.name)
            ],
        }

    @api.post("/embeddings", response_model=EmbeddingResponse, summary="Create embeddings",
              responses=_ERRORS)
    async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
        state = gateway_state(request)
        started = time.perf_counter()
        served: ServedModel | None = None
        try:
            served = _embedding_model(state, body.model)
            texts = _texts(body)
            width = served.config.outputs[0].shape[-1]
            if body.dimensions is not None and body.dimensions != width:
                raise InvalidRequestError(
                    f"model '{served.name}' makes {width}-dimensional embeddings; "
                    f"'dimensions' {body.dimensions} is not supported"
                )
            deadline = deadline_from(None, request.headers)
            chunk = served.config.batching.max_batch_size or len(texts)
            pieces = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
            input_name, output_name = _input_name(served), _output_name(served)
            outcomes = await asyncio.gather(*(
                state.router.infer(
                    served.name, served.version,
                    {input_name: np.array([t.encode() for t in piece], dtype=object)},
                    deadline=deadline,
                )
                for piece in pieces
            ))
        except Exception as exc:
            error = as_kcloud_error(request.url.path, exc)
            state.observer.failed(served.name if served is not None else "", error.status, protocol="openai")
            return error_response(error, request.url.path).response()
        data: list[dict] = []
        tokens = 0
        for piece_start, outcome in zip(range(0, len(texts), chunk), outcomes, strict=True):
            data += _encode_rows(outcome.outputs[output_name], body.encoding_format, piece_start)
            tokens += _token_count(outcome.prepared.extra)
        state.observer.served(served, "openai", outcomes[0].device_uid, time.perf_counter() - started)
        payload = {
            "object": "list",
            "data": data,
            "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        body_bytes = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body_bytes, media_type="application/json")

    return api
