"""The serving path's Prometheus metrics, all in one place, on a registry the caller owns.

No global registry: a test, a second gateway in one process or a benchmark each get their own,
so figures never leak between them. Replicas record the batch side (queue, compute, batch
rows, queue depth, modelled device time); the gateway records the request side (requests,
errors, total latency).

Names follow the vendor-neutral `kcloud_` namespace with base units (seconds, rows). The model
label is the model name; `device` is the device uid (`node/id`), `replica` the replica id.
`kcloud_modelled_device_seconds` exists only for emulated devices and says "modelled" in its
name so nobody mistakes it for a measurement.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: 100 µs .. 30 s: a no-op batch on a CPU is tens of µs, a big batch on an emulated farm seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: The gateway's own share of a stream's first token is sub-millisecond to a few ms.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                    0.02, 0.05, 0.1, 0.25, 1.0)


class ServingMetrics:
    """Metric objects of the serving path, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests_total = Counter(
            "kcloud_requests", "Inference requests received", ["model", "version", "protocol"],
            registry=registry)
        self.errors_total = Counter(
            "kcloud_request_errors", "Inference requests answered with an error, by HTTP status code",
            ["model", "code"], registry=registry)
        self.queue_seconds = Histogram(
            "kcloud_queue_seconds", "Time a request waited in its replica's queue before its batch started",
            ["model", "device"], buckets=LATENCY_BUCKETS, registry=registry)
        self.compute_seconds = Histogram(
            "kcloud_compute_seconds", "Measured time one batch spent in its worker (one sample per batch)",
            ["model", "device"], buckets=LATENCY_BUCKETS, registry=registry)
        self.total_seconds = Histogram(
            "kcloud_request_seconds", "Time from request received to response ready, at the gateway",
            ["model", "device"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_rows = Histogram(
            "kcloud_batch_rows", "Rows per batch sent to a device", ["model", "device"],
            buckets=BATCH_ROW_BUCKETS, registry=registry)
        self.queue_depth = Gauge(
            "kcloud_queue_depth", "Requests waiting in a replica's queue", ["model", "replica"],
            registry=registry)
        self.llm_routed_total = Counter(
            "kcloud_llm_routed", "Generations sent to an engine replica, by the routing policy that chose it "
            "(prefix: a replica that had seen the prompt's prefix; least-tokens; round-robin)",
            ["model", "replica", "policy"], registry=registry)
        self.llm_first_token_added_seconds = Histogram(
            "kcloud_llm_gateway_first_token_seconds",
            "The gateway's own part of a stream's time to first token: from the request reaching the "
            "gateway to its sending to the engine, plus from the engine's first event arriving to its "
            "relay to the client (the engine's own time is not in it)",
            ["model"], buckets=OVERHEAD_BUCKETS, registry=registry)
        self.modelled_device_seconds = Histogram(
            "kcloud_modelled_device_seconds",
            "MODELLED time one batch would take on the emulated device's catalog chip (not measured)",
            ["model", "device"], buckets=LATENCY_BUCKETS, registry=registry)
