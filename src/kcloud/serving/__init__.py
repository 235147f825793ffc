"""kcloud.serving: replicas with dynamic batching behind a router, and the HTTP gateway over them.

Import the few names here; submodules stay importable on their own (a worker child process
imports only `kcloud.runtimes`).
"""

from kcloud.serving.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    ModelNotReadyError,
    QueueFullError,
    ReplicaDiedError,
    ServingError,
)
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import InferOutcome, Replica, create_replica
from kcloud.serving.router import Router

__all__ = [
    "DeadlineExceededError",
    "InferOutcome",
    "InferenceFailedError",
    "ModelNotReadyError",
    "QueueFullError",
    "Replica",
    "ReplicaDiedError",
    "Router",
    "ServingError",
    "ServingMetrics",
    "create_replica",
]
