"""What every route of one gateway shares: the router, the metrics, the inventory, the limits.

Kept on `app.state.gateway` so that routers added later (admin, tenancy) reach the same objects
without globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.requests import Request

from kcloud.serving.gateway.observe import RequestObserver
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.router import Router

if TYPE_CHECKING:
    from kcloud.devices.inventory import Inventory


@dataclass
class GatewayState:
    router: Router
    metrics: ServingMetrics
    observer: RequestObserver
    registry: CollectorRegistry
    inventory: Inventory | None
    max_body_bytes: int
    extras: dict[str, Any]


def gateway_state(request: Request) -> GatewayState:
    """The gateway's shared state (a FastAPI dependency as well as a helper)."""
    return request.app.state.gateway
