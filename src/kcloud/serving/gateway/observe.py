"""The gateway's side of the serving metrics: requests, errors by status, total latency.

Label children are cached per (model, version, protocol) so the hot path does one dict lookup,
not prometheus_client's locked label resolution, per request. An error on an unknown model is
counted under model "" so that a client sending random names cannot grow the label set.
"""

from __future__ import annotations

from typing import Any

from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.served import ServedModel


class RequestObserver:
    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self._served: dict[tuple[str, int, str, str], tuple[Any, Any]] = {}

    def served(self, model: ServedModel, protocol: str, device_uid: str, seconds: float) -> None:
        key = (model.name, model.version, protocol, device_uid)
        children = self._served.get(key)
        if children is None:
            children = (
                self.metrics.requests_total.labels(model.name, str(model.version), protocol),
                self.metrics.total_seconds.labels(model.name, device_uid),
            )
            self._served[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def failed(self, model: str, status: int, *, version: int | None = None, protocol: str = "oip") -> None:
        self.metrics.requests_total.labels(model, "" if version is None else str(version), protocol).inc()
        self.metrics.errors_total.labels(model, str(status)).inc()
