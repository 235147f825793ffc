"""Errors of the serving path, each carrying the HTTP status the gateway answers with.

They live in one small module so that the gateway, the router and the replicas agree on what
a failure means without importing each other. Client mistakes are not here: those are
`kcloud.models.pipeline.InputError` (400) and `kcloud.models.errors.ModelNotFoundError` (404).
"""

from __future__ import annotations


class ServingError(Exception):
    """A request could not be served; `status` is the HTTP status to answer with."""

    status: int = 500


class QueueFullError(ServingError):
    """The replica's queue is at its limit: shed the request (429) and say when to come back."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was computed; it never reached the device (504)."""

    status = 504


class ModelNotReadyError(ServingError):
    """The model is served but has no live replica right now (503)."""

    status = 503


class ReplicaDiedError(ServingError):
    """The replica (its worker process) died or stopped with this request on it.

    Internal first: the router retries the request once on another live replica. It reaches
    the client (503) only when that retry fails too.
    """

    status = 503


class InferenceFailedError(ServingError):
    """The runtime raised while computing a batch: a server-side fault, not the client's (500)."""

    status = 500
