"""`Pipeline`: how one model turns request tensors into ONNX feeds and outputs back.

The batcher stays generic: it calls `prepare` once per request (where bad input is refused,
before the request takes a place in a batch), `collate` once per batch and `split` to hand
each request its own rows. A text model tokenises in `prepare` and pads in `collate`; a plain
tensor model only checks and concatenates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kcloud.errors import InvalidRequestError
from kcloud.models.config import ModelConfig


class InputError(InvalidRequestError, ValueError):
    """The request does not fit the model's signature: the client's mistake, so a 400, never a 500."""


@dataclass
class Prepared:
    """One request, checked and converted; `rows` is its share of the batch."""

    rows: int
    feeds: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    config: ModelConfig

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared:
        """Check one request's public inputs; raise `InputError` with a clear message."""

    def heavy(self, inputs: dict[str, np.ndarray]) -> bool:
        """True when `prepare` of these inputs costs enough CPU (milliseconds: long texts to
        tokenise) that it must run off the event loop; never raises."""

    def collate(self, items: list[Prepared]) -> dict[str, np.ndarray]:
        """Join prepared requests into the ONNX graph's feeds."""

    def split(self, outputs: dict[str, np.ndarray], items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        """Cut the graph's outputs into each request's public outputs, in `items` order."""
