"""`GET /metrics`: Prometheus text exposition of the gateway's own registry.

Rendered in a worker thread: the device collector samples sensors (NVML, /proc, vendor tools)
at scrape time, and a slow sensor must not stall the event loop that serves inference.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from kcloud.serving.gateway.state import gateway_state


def metrics_router() -> APIRouter:
    api = APIRouter(tags=["Metrics"])

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        registry = gateway_state(request).registry
        text = await asyncio.to_thread(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return api
