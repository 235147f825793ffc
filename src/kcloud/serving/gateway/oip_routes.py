"""Open Inference Protocol v2 REST: health, metadata and inference routes.

Paths and bodies follow KServe's `docs/predict-api/v2/required_api.md` and the Open Inference
Protocol's `inference_rest.md`; binary tensors follow Triton's `extension_binary_data.md`, so an
unmodified `tritonclient.http.InferenceServerClient` works against us.

Health answers by status code (200 true, 400 false, as the spec's "a 4xx status code indicates
false" and Triton do) with the OIP JSON body (`{"live": ...}`, `{"ready": ...}`).

The metadata and health routes are FastAPI (typed, in the OpenAPI document). Inference is
answered on raw ASGI by `infer_lane.InferLane`, ahead of FastAPI's routing: no pydantic model on
the tensor body, one decode by the codec, one encode back, so the gateway stays thin next to the
model's compute. Its routes here are documentation only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from kcloud import __version__
from kcloud.models.errors import ModelNotFoundError
from kcloud.serving.gateway.state import gateway_state
from kcloud.serving.router import Router

#: Platform name for ONNX models in the spec's "Platforms" list.
PLATFORM = "onnx_onnxv1"
SERVER_NAME = "kcloud"
#: Extensions we implement: Triton's binary tensor data, and request parameters (`timeout`).
EXTENSIONS = ["binary_tensor_data", "parameters"]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ErrorResponse(BaseModel):
    error: str


# -- schemas of the inference body, for the OpenAPI document only (the hot path never builds them)
class InferInputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64 or BYTES")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: the tensor's bytes follow the JSON")
    data: list[Any] | None = Field(default=None, description="row-major, flat or nested")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(default=None, description="`binary_data`: true or false")


class InferRequestBody(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output`; `timeout` in microseconds")
    inputs: list[InferInputTensor]
    outputs: list[RequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutputTensor]


_INFER_ERRORS = {
    400: {"model": ErrorResponse, "description": "bad input"},
    404: {"model": ErrorResponse, "description": "unknown model or version"},
    413: {"model": ErrorResponse, "description": "body over the limit"},
    429: {"model": ErrorResponse, "description": "queue full; see Retry-After"},
    503: {"model": ErrorResponse, "description": "no live replica"},
    504: {"model": ErrorResponse, "description": "deadline passed before compute"},
}
_INFER_DESCRIPTION = (
    "Open Inference Protocol v2 inference. The body is the JSON inference request, optionally "
    "followed by binary tensor data (Triton's binary tensor data extension): then send "
    "`Content-Type: application/octet-stream` and `Inference-Header-Content-Length: <JSON bytes>`. "
    "Binary outputs come back the same way."
)


_ERRORS = {
    400: {"model": ErrorResponse, "description": "bad request"},
    404: {"model": ErrorResponse, "description": "unknown model or version"},
}


def parse_version(name: str, text: str | None) -> int | None:
    """A version from the URL; anything but a positive integer is an unknown version (404)."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ModelNotFoundError(f"model {name!r} has no version {text!r}; versions are positive integers")
    return int(text)


def _tensors(specs) -> list[dict]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def model_metadata(router: Router, name: str, version: int | None) -> dict:
    served = router.served(name, version)
    versions = sorted({e.version for e in router.served_models() if e.name == name})
    return {
        "name": served.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": _tensors(served.config.inputs),
        "outputs": _tensors(served.config.outputs),
    }


def server_ready(router: Router) -> bool:
    """Ready when every served model has a live replica."""
    return all(router.is_ready(e.name, e.version) for e in router.served_models())


def metadata_router() -> APIRouter:
    """Health and metadata routes (FastAPI, documented in /docs)."""
    api = APIRouter(tags=["Open Inference Protocol v2"])

    @api.get("/v2", response_model=ServerMetadata, summary="Server metadata")
    async def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @api.get("/v2/health/live", response_model=LiveResponse, summary="Server live")
    async def live() -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", response_model=ReadyResponse, summary="Server ready",
             responses={400: {"model": ReadyResponse, "description": "not ready"}})
    async def ready(request: Request) -> Response:
        is_ready = server_ready(gateway_state(request).router)
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 400)

    async def _model_ready(request: Request, model: str, version: str | None) -> Response:
        router = gateway_state(request).router
        number = parse_version(model, version)
        served = router.served(model, number)  # 404 for an unknown model or version
        is_ready = router.is_ready(served.name, number)
        return JSONResponse({"name": served.name, "ready": is_ready}, status_code=200 if is_ready else 400)

    @api.get("/v2/models/{model}/ready", response_model=ModelReadyResponse, summary="Model ready",
             responses=_ERRORS)
    async def model_ready(request: Request, model: str) -> Response:
        return await _model_ready(request, model, None)

    @api.get("/v2/models/{model}/versions/{version}/ready", response_model=ModelReadyResponse,
             summary="Model version ready", responses=_ERRORS)
    async def model_version_ready(request: Request, model: str, version: str) -> Response:
        return await _model_ready(request, model, version)

    @api.get("/v2/models/{model}", response_model=ModelMetadata, summary="Model metadata",
             responses=_ERRORS)
    async def metadata(request: Request, model: str) -> dict:
        return model_metadata(gateway_state(request).router, model, None)

    @api.get("/v2/models/{model}/versions/{version}", response_model=ModelMetadata,
             summary="Model version metadata", responses=_ERRORS)
    async def version_metadata(request: Request, model: str, version: str) -> dict:
        return model_metadata(gateway_state(request).router, model, parse_version(model, version))

    # Documentation only: `InferLane` answers these paths before FastAPI's routing sees them.
    @api.post("/v2/models/{model}/infer", response_model=InferResponseBody, summary="Inference",
              description=_INFER_DESCRIPTION, responses=_INFER_ERRORS)
    async def infer_documented(model: str, body: InferRequestBody) -> None:
        raise RuntimeError("documentation route reached; InferLane must answer inference")

    @api.post("/v2/models/{model}/versions/{version}/infer", response_model=InferResponseBody,
              summary="Inference on a model version", description=_INFER_DESCRIPTION,
              responses=_INFER_ERRORS)
    async def infer_version_documented(model: str, version: str, body: InferRequestBody) -> None:
        raise RuntimeError("documentation route reached; InferLane must answer inference")

    return api
