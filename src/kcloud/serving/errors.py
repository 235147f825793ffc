"""Errors of the serving path: `ServingError`s, each a `kcloud.errors.KcloudError` whose status the
gateway answers with.

They live in one small module so that the gateway, the router and the replicas agree on what
a failure means without importing each other. Client mistakes are not here: those are
`kcloud.models.pipeline.InputError` (400) and `kcloud.models.errors.ModelNotFoundError` (404).
"""

from __future__ import annotations

import math

from kcloud.errors import KcloudError


class ServingError(KcloudError):
    """A request could not be served (by default a fault of ours: 500).

    Kept as the common base of the serving path's failures because the batcher and the router
    tell these (which end one request) from anything else (which may end a replica).
    """

    status = 500


class QueueFullError(ServingError):
    """The replica's queue is at its limit: shed the request (429) and say when to come back."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        # HTTP's Retry-After is whole seconds, and 0 would invite an immediate retry.
        super().__init__(message, headers={"retry-after": str(max(1, math.ceil(retry_after_s)))})
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
