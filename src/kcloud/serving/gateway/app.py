"""`create_app`: the HTTP gateway in front of a `Router`.

One FastAPI app serves both standards (Open Inference Protocol v2 under `/v2`, OpenAI under
`/v1`) and Prometheus `/metrics`. Later parts plug in without editing this file: admin routers
through `extra_routers`, auth through `app.add_middleware`, extra collectors on `registry`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from kcloud import __version__
from kcloud.serving.gateway.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from kcloud.serving.gateway.errors import install_error_handlers
from kcloud.serving.gateway.infer_lane import InferLane
from kcloud.serving.gateway.llm_routes import generate_router, llm_router
from kcloud.serving.gateway.metrics_route import metrics_router
from kcloud.serving.gateway.observe import RequestObserver
from kcloud.serving.gateway.oip_routes import metadata_router
from kcloud.serving.gateway.openai_routes import openai_router
from kcloud.serving.gateway.openapi import install_openapi
from kcloud.serving.gateway.request_line import RequestLineGuard
from kcloud.serving.gateway.state import GatewayState
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.router import Router

if TYPE_CHECKING:
    from kcloud.devices.inventory import Inventory

log = logging.getLogger(__name__)

#: FastAPI's own OpenTelemetry hooks, off: kcloud's metrics are its Prometheus `/metrics`, and the
#: hooks ask the OpenTelemetry API for a provider on every request (measured: about 5 % of the
#: gateway's CPU per no-op inference). FastAPI releases without the setting take nothing.
_WITHOUT_OPENTELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)

DESCRIPTION = """\
kcloud serves models over the **Open Inference Protocol v2** (KServe/Triton REST, with Triton's
binary tensor data extension) under `/v2`, and **OpenAI-compatible** embeddings under `/v1`.
Inference (`POST /v2/models/{model}[/versions/{version}]/infer`) takes the OIP JSON body, or
JSON followed by binary tensors with an `Inference-Header-Content-Length` header.
Errors are `{"error": "..."}` (OIP) or OpenAI's error object (`/v1`).
"""


class GatewayApp(FastAPI):
    """FastAPI with `RequestLineGuard` outside everything, middleware added later included.

    `add_middleware` puts what is added last outermost, and tenancy's is added after `create_app`;
    a path no route can serve is refused before authentication, audit or anything else reads it.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLineGuard(super().build_middleware_stack())


def create_app(
    router: Router,
    *,
    inventory: Inventory | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    extra_routers: Sequence[APIRouter] = (),
    registry: CollectorRegistry | None = None,
    metrics: ServingMetrics | None = None,
) -> FastAPI:
    """The gateway app over `router`.

    `registry` is what `/metrics` exposes: the serving metrics (pass `metrics` when the replicas
    already record into one, so both sides land in the same registry) and, given an
    `inventory`, the device telemetry collector. `max_body_bytes` caps every request body (413).
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    if metrics is not None and registry is not None and metrics.registry is not registry:
        raise ValueError("metrics is registered on another registry than the one given")
    if registry is None:
        registry = metrics.registry if metrics is not None else CollectorRegistry()
    if metrics is None:
        metrics = ServingMetrics(registry)
    if inventory is not None:
        _register_device_collector(registry, inventory)

    app = GatewayApp(
        title="kcloud gateway",
        version=__version__,
        description=DESCRIPTION,
        **_WITHOUT_OPENTELEMETRY,
    )
    state = GatewayState(
        router=router,
        metrics=metrics,
        observer=RequestObserver(metrics),
        registry=registry,
        inventory=inventory,
        max_body_bytes=max_body_bytes,
        extras={},
    )
    app.state.gateway = state
    app.include_router(metadata_router())
    app.include_router(openai_router())
    app.include_router(llm_router())
    app.include_router(generate_router())
    app.include_router(metrics_router())
    for extra in extra_routers:
        app.include_router(extra)
    install_error_handlers(app)
    install_openapi(app)
    # Middleware added later wraps what was added before: the inference lane (the hot path) sits
    # innermost, behind the body cap and whatever is attached later (authentication).
    app.add_middleware(InferLane, state=state)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    return app


def _register_device_collector(registry: CollectorRegistry, inventory: Inventory) -> None:
    from kcloud.devices.metrics import DeviceCollector

    registry.register(DeviceCollector(inventory))
