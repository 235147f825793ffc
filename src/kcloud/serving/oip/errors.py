"""The one error the codec raises for a bad message."""

from __future__ import annotations

from kcloud.errors import InvalidRequestError


class CodecError(InvalidRequestError, ValueError):
    """A request (or response) that breaks the Open Inference Protocol v2.

    The message names the tensor and what is wrong with it, so a gateway can answer
    `400 {"error": str(e)}` and the client knows what to fix without reading our code.
    """
