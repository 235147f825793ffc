"""The autoscaling policy: from a deployment's load readings to how many replicas it should run.

Pure: no clock, no database, no router. `Scaler.observe` takes one `LoadReading` per metrics
interval and `Scaler.decide(now, replicas)` answers a `Decision`; the control plane's loop
(`kcloud.farm.autoscaler`) feeds it from the router, and a simulation can feed it simulated
readings and get the same decisions.

The rule is Knative's, with Ray Serve's delays:

- **wanted** = ceil(metric over the window / target per replica): the metric is the mean of
  requests in flight (`ongoing`), the arrival rate (`rps`), the mean tokens in flight (`tokens`);
  for `p99` it is the current count scaled by how far the window's p99 latency is from the target
  (over it: out in proportion; under half of it: in by one);
- over the **stable** window normally; when the **panic** window's load is `panic_threshold` times
  what the replicas now are meant to carry (p99: that many times the target), the scaler panics: it
  scales out to the panic figure at once and never scales in until a whole stable window has passed
  without that condition;
- a scale-out happens after the wish has lasted `upscale_delay_s`, a scale-in after
  `downscale_delay_s`, and then only down to the highest count wished during that delay;
- **activation**: a deployment at zero with any request (or a request waiting for one) gets one
  replica at once, whatever the delays;
- the answer is kept within [min_replicas, max_replicas].
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from kcloud.farm.spec import Autoscale
from kcloud.serving.load import LoadReading

#: p99 mode scales in by one while the window's p99 is under this fraction of the target.
P99_SCALE_IN_BELOW = 0.5


@dataclass(frozen=True)
class Decision:
    """What the scaler wants now, and why (the reason and inputs go into the scaling event)."""

    replicas: int  # the count to run now (equal to the current one: hold)
    wanted: int  # what the metric asks for, within min and max, before delays
    reason: str
    inputs: dict[str, float | int | bool | None] = field(default_factory=dict)
    panic: bool = False

    def changes(self, current: int) -> bool:
        return self.replicas != current


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank, as LoadGen reports latencies."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Scaler:
    """One deployment's autoscaling state: its readings over the stable window, panic, delays."""

    def __init__(self, policy: Autoscale) -> None:
        if policy.target is None:  # the control plane fills it in when it accepts a policy
            raise ValueError("the policy's target per replica must be set")
        self.policy = policy
        self.target = policy.target
        self._readings: deque[LoadReading] = deque()
        self._panic_until: float | None = None  # panicking until then (extended while the condition holds)
        self._wish_since: float | None = None  # when the current direction of wish began
        self._wish_up: bool | None = None
        self._wished_max = 0  # the highest count wished since `_wish_since` (scale-in goes there)
        self._cold = False  # a request waits at zero replicas

    # -- input ----------------------------------------------------------------------------------
    def observe(self, reading: LoadReading) -> None:
        self._readings.append(reading)
        horizon = reading.at - self.policy.stable_window_s
        while self._readings and self._readings[0].at <= horizon:
            self._readings.popleft()

    def cold_request(self) -> None:
        """A request arrived while the deployment had no replica: activate on the next decision."""
        self._cold = True

    # -- the metric -----------------------------------------------------------------------------
    def _window(self, now: float, seconds: float) -> list[LoadReading]:
        return [r for r in self._readings if r.at > now - seconds]

    def value(self, now: float, seconds: float) -> float | None:
        """The metric over the last `seconds` (p99 in ms); None when there is nothing to measure."""
        readings = self._window(now, seconds)
        if not readings:
            return None
        metric = self.policy.metric
        if metric == "ongoing":
            return sum(r.in_flight for r in readings) / len(readings)
        if metric == "tokens":
            return sum(r.tokens_in_flight for r in readings) / len(readings)
        if metric == "rps":
            span = max(seconds if len(readings) > 1 else 0.0, readings[-1].at - readings[0].at)
            span = min(seconds, span) or seconds
            return sum(r.arrivals for r in readings) / span
        latencies = [x for r in readings for x in r.latencies_s]
        return percentile(latencies, 99) * 1000.0 if latencies else None

    def _wanted(self, value: float | None, current: int) -> int:
        if value is None:
            return 0
        if self.policy.metric != "p99":
            return math.ceil(value / self.target - 1e-9)
        ratio = value / self.target
        if ratio > 1.0:
            return max(current + 1, math.ceil(max(current, 1) * ratio))
        if ratio < P99_SCALE_IN_BELOW:
            return max(1, current - 1)
        return max(1, current)

    def _load_ratio(self, value: float, current: int) -> float:
        """The load against what `current` replicas are meant to carry (p99: against the target)."""
        if self.policy.metric == "p99":
            return value / self.target
        return value / (current * self.target)

    def _bounded(self, replicas: int) -> int:
        return min(self.policy.max_replicas, max(self.policy.min_replicas, replicas))

    # -- the decision ---------------------------------------------------------------------------
    def decide(self, now: float, current: int) -> Decision:
        policy = self.policy
        if current > 0:
            self._cold = False
        stable = self.value(now, policy.stable_window_s)
        quick = self.value(now, policy.panic_window_s)
        busy = any(r.in_flight or r.arrivals for r in self._window(now, policy.stable_window_s))
        inputs: dict[str, float | int | bool | None] = {
            "metric_stable": _rounded(stable), "metric_panic": _rounded(quick), "target": self.target,
            "current": current}
        wanted_stable = self._wanted(stable, current)
        wanted_panic = self._wanted(quick, current)
        if busy and wanted_stable == 0:  # some traffic keeps one replica
            wanted_stable = 1
        if current > 0 and wanted_panic > current and quick is not None and self._load_ratio(
                quick, current) >= policy.panic_threshold:
            self._panic_until = now + policy.stable_window_s
        panic = self._panic_until is not None and now < self._panic_until
        if not panic:
            self._panic_until = None
        wanted = self._bounded(max(wanted_stable, wanted_panic, current) if panic else wanted_stable)
        inputs |= {"wanted": wanted, "panic": panic}
        unit = _UNITS[policy.metric]

        def said(replicas: int, why: str) -> Decision:
            return Decision(replicas, wanted, why, inputs, panic)

        if current == 0 and (self._cold or busy):
            self._reset_wish()
            return said(self._bounded(max(1, wanted)),
                        "a request arrived at zero replicas: starting one (cold start)")
        if current < policy.min_replicas or current > policy.max_replicas:
            self._reset_wish()
            return said(self._bounded(current), f"kept within min {policy.min_replicas} and max "
                                                f"{policy.max_replicas}")
        if wanted == current:
            self._reset_wish()
            return said(current, "at the target")
        up = wanted > current
        if self._wish_up is not up:
            self._wish_up, self._wish_since, self._wished_max = up, now, wanted
        self._wished_max = max(self._wished_max, wanted)
        assert self._wish_since is not None
        waited = now - self._wish_since
        measured = "no load" if stable is None else f"{_fmt(stable)} {unit} over {policy.stable_window_s:g} s"
        if up:
            if panic:
                self._reset_wish()
                return said(wanted, f"panic: {_fmt(quick)} {unit} over the last {policy.panic_window_s:g} s "
                                    f"asks for {wanted} replicas (target {_fmt(self.target)} per replica)")
            if waited >= policy.upscale_delay_s:
                self._reset_wish()
                return said(wanted, f"{measured} asks for {wanted} replicas "
                                    f"(target {_fmt(self.target)} {unit} per replica)")
            return said(current, f"scale-out to {wanted} waits {policy.upscale_delay_s - waited:.0f} s more")
        if panic:
            return said(current, "panic: no scale-in until the load has been calm for a stable window")
        if waited >= policy.downscale_delay_s:
            fewer = self._wished_max  # the most wished during the delay, all below `current`
            self._reset_wish()
            return said(fewer, f"{measured} for {policy.downscale_delay_s:g} s asks for {fewer} "
                               f"replicas (target {_fmt(self.target)} {unit} per replica)")
        return said(current, f"scale-in to {wanted} waits {policy.downscale_delay_s - waited:.0f} s more")

    def _reset_wish(self) -> None:
        self._wish_up = self._wish_since = None
        self._wished_max = 0


_UNITS = {"ongoing": "requests in flight", "rps": "requests/s", "tokens": "tokens in flight",
          "p99": "ms p99"}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
