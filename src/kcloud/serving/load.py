"""`LoadMeter`: what each served model is asked to do, as the autoscaler reads it.

The router counts, per served name, the requests in flight (arrived and not yet answered, queued
or computing, on any replica), every arrival, and each answered request's latency. The
autoscaler (`kcloud.farm.autoscaler`) takes a `LoadReading` of each name once per metrics
interval; readings are cheap (a few integers and the latencies since the last reading), so the
request path pays one dict look-up and two additions.

Latencies are kept only for a model someone reads (after its first reading), only between
readings, and at most `LATENCIES_KEPT` of them (the newest): a p99 over a window is computed by
the reader from the readings it keeps.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

#: Most latencies one reading carries (a second of 10 k requests/s); older ones are dropped.
LATENCIES_KEPT = 10_000


@dataclass(frozen=True)
class LoadReading:
    """One model's load since the previous reading."""

    at: float  # time.monotonic() of the reading
    in_flight: int  # requests arrived and not answered, now
    arrivals: int  # requests that arrived since the previous reading
    latencies_s: tuple[float, ...]  # seconds from arrival to answer, of those answered since
    shed: int  # requests refused for load (429) since the previous reading
    #: Seconds each request that arrived at zero replicas waited for the first one (scale from zero).
    cold_waits_s: tuple[float, ...] = ()
    #: Prompt plus maximum new tokens of the generations in flight (chat models; 0 for others).
    tokens_in_flight: int = 0


@dataclass
class _Counts:
    in_flight: int = 0
    arrivals: int = 0
    shed: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    cold_waits: list[float] = field(default_factory=list)
    read: bool = False  # someone reads this model's load: keep its latencies


class LoadMeter:
    """Per served name: in flight, arrivals, latencies, sheds and cold waits, read and reset."""

    def __init__(self) -> None:
        self._counts: dict[str, _Counts] = {}

    def _of(self, name: str) -> _Counts:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = _Counts()
        return counts

    def arrived(self, name: str) -> float:
        """A request of `name` arrived; returns its start time for `answered`/`left`."""
        counts = self._of(name)
        counts.in_flight += 1
        counts.arrivals += 1
        return time.monotonic()

    def answered(self, name: str, started: float) -> None:
        """The request that arrived at `started` was answered (successfully)."""
        counts = self._of(name)
        counts.in_flight -= 1
        if counts.read:
            counts.latencies.append(time.monotonic() - started)

    def left(self, name: str, *, shed: bool = False) -> None:
        """The request ended without an answer (refused, failed, timed out); `shed`: refused for load."""
        counts = self._of(name)
        counts.in_flight -= 1
        if shed:
            counts.shed += 1

    def cold_wait(self, name: str, seconds: float) -> None:
        """A request that found no replica waited `seconds` for the first one to serve."""
        self._of(name).cold_waits.append(seconds)

    def read(self, name: str, *, tokens_in_flight: int = 0) -> LoadReading:
        """The load of `name` since the previous reading (which this one resets)."""
        counts = self._of(name)
        reading = LoadReading(
            at=time.monotonic(),
            in_flight=counts.in_flight,
            arrivals=counts.arrivals,
            latencies_s=tuple(counts.latencies),
            shed=counts.shed,
            cold_waits_s=tuple(counts.cold_waits),
            tokens_in_flight=tokens_in_flight,
        )
        counts.arrivals = counts.shed = 0
        counts.read = True
        counts.latencies.clear()
        counts.cold_waits.clear()
        return reading

    def forget(self, name: str) -> None:
        """No one reads `name` any more: stop keeping its latencies and waits."""
        counts = self._counts.get(name)
        if counts is not None:
            counts.read = False
            counts.latencies.clear()
            counts.cold_waits.clear()
