"""Rate limits per key (token bucket) and a concurrency cap per tenant.

Both are checked in the gateway before a request is parsed or queued, so a flooding tenant pays
only for the key check and a few arithmetic operations per rejected request, and can never hold
more than its cap of places in the shared replicas' queues. That cap is what keeps another
tenant's latency flat during a flood.

State is per process and lives on the event loop's thread (no locks): a farm running several
gateway processes gives each process its own buckets, so a key's effective limit is the limit
times the number of processes. The embedded default runs one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def retry_after_header(seconds: float) -> str:
    """HTTP `Retry-After` in whole seconds (RFC 9110 delta-seconds), never 0."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; one request takes one token."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {self.rate}, {self.burst}")
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 if granted, else the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyRateLimiter:
    """One token bucket per key, rebuilt when the key's limits change."""

    def __init__(self) -> None:
        self._buckets: dict[int, TokenBucket] = {}

    def take(self, key_id: int, rate: float | None, burst: float | None, now: float | None = None) -> float:
        """0.0 if the request may go; otherwise seconds to wait. `rate=None` means no limit."""
        if rate is None:
            return 0.0
        burst = max(1.0, burst if burst is not None else rate)
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[key_id] = TokenBucket(rate=rate, burst=burst)
        return bucket.take(now)

    def forget(self, key_id: int) -> None:
        self._buckets.pop(key_id, None)


class ConcurrencyLimiter:
    """Requests in flight per tenant, capped; a slot is held from admission until the response ends."""

    def __init__(self) -> None:
        self._in_flight: dict[int, int] = {}

    def try_enter(self, tenant_id: int, cap: int | None) -> bool:
        current = self._in_flight.get(tenant_id, 0)
        if cap is not None and current >= cap:
            return False
        self._in_flight[tenant_id] = current + 1
        return True

    def leave(self, tenant_id: int) -> None:
        remaining = self._in_flight.get(tenant_id, 0) - 1
        if remaining > 0:
            self._in_flight[tenant_id] = remaining
        else:
            self._in_flight.pop(tenant_id, None)

    def in_flight(self, tenant_id: int) -> int:
        return self._in_flight.get(tenant_id, 0)
