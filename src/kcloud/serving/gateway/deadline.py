"""A request's deadline, from the OIP `timeout` parameter or the `X-Request-Timeout-Ms` header.

`timeout` is in microseconds, as Triton's parameters extension and `tritonclient`'s
`infer(timeout=...)` send it. The header is for plain HTTP clients that cannot set OIP
parameters (the OpenAI routes, curl). The deadline is absolute `time.monotonic()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from kcloud.errors import InvalidRequestError

TIMEOUT_HEADER = "x-request-timeout-ms"


def deadline_from(parameters: Mapping[str, object] | None, headers: Mapping[str, str]) -> float | None:
    """The absolute deadline, or None when the client set none; a bad value is a 400."""
    budget_s: float | None = None
    if parameters:
        timeout_us = parameters.get("timeout")
        if timeout_us is not None:
            if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us <= 0:
                raise InvalidRequestError(f"parameters.timeout must be a positive integer of microseconds, "
                                          f"got {timeout_us!r}")
            budget_s = timeout_us / 1e6
    header = headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            header_ms = float(header)
        except ValueError:
            header_ms = math.nan
        if not math.isfinite(header_ms) or header_ms <= 0:
            raise InvalidRequestError(f"X-Request-Timeout-Ms must be a positive number of milliseconds, "
                                      f"got {header!r}")
        budget_s = header_ms / 1e3 if budget_s is None else min(budget_s, header_ms / 1e3)
    if budget_s is None:
        return None
    return time.monotonic() + budget_s
