"""The autoscaling policy (`kcloud.farm.autoscaling.Scaler`) on made-up readings: no clock, no
server. Each test feeds one reading per second and checks the count decided."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kcloud.farm.autoscaling import Scaler, percentile
from kcloud.farm.spec import Autoscale
from kcloud.serving.load import LoadReading


def reading(at: float, in_flight: int = 0, arrivals: int = 0, latencies: tuple[float, ...] = (),
            tokens: int = 0) -> LoadReading:
    return LoadReading(at=at, in_flight=in_flight, arrivals=arrivals, latencies_s=latencies, shed=0,
                       tokens_in_flight=tokens)


def run(scaler: Scaler, start: float, seconds: int, current: int, **load: object) -> tuple[float, int]:
    """Feed `seconds` readings of the same load, applying each decision; the time and count after."""
    now = start
    for _ in range(seconds):
        now += 1.0
        scaler.observe(reading(now, **load))  # type: ignore[arg-type]
        current = scaler.decide(now, current).replicas
    return now, current


def policy(**fields: object) -> Autoscale:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 8, "stable_window_s": 10,
                               "panic_window_s": 2, "downscale_delay_s": 5}
    return Autoscale.model_validate(base | fields)


def test_ongoing_requests_scale_out_to_load_over_target_and_back_in_after_the_delay() -> None:
    scaler = Scaler(policy(target=4))
    now, current = run(scaler, 0, 10, 1, in_flight=2)
    assert current == 1
    now, current = run(scaler, now, 12, current, in_flight=12)  # 12 in flight / 4 per replica
    assert current == 3
    # load falls back: the stable window still remembers it for a while, then the delay passes
    now, after_4s = run(scaler, now, 4, current, in_flight=2)
    assert after_4s == 3
    now, current = run(scaler, now, 20, after_4s, in_flight=2)
    assert current == 1


def test_panic_scales_out_at_once_and_holds_until_a_calm_stable_window() -> None:
    scaler = Scaler(policy(target=4))
    now, current = run(scaler, 0, 10, 1, in_flight=4)
    assert current == 1
    now += 1
    scaler.observe(reading(now, in_flight=40))  # a burst: the 2 s panic window averages 22 in flight
    decision = scaler.decide(now, current)
    assert decision.panic and decision.replicas == 6  # ceil(22 / 4), while the stable window says 2
    assert "panic" in decision.reason
    # calm again: no scale-in while panicking (a stable window from the burst)
    now, held = run(scaler, now, 5, decision.replicas, in_flight=4)
    assert held == 6
    now, current = run(scaler, now, 25, held, in_flight=4)
    assert current == 1


def test_upscale_delay_waits_for_the_wish_to_last() -> None:
    scaler = Scaler(policy(upscale_delay_s=3, panic_threshold=100, target=4))
    now, current = run(scaler, 0, 2, 1, in_flight=12)
    assert current == 1
    now, current = run(scaler, now, 3, current, in_flight=12)
    assert current == 3


def test_idle_deployment_scales_to_zero_and_a_cold_request_activates_it_at_once() -> None:
    scaler = Scaler(policy(min_replicas=0, target=4))
    now, current = run(scaler, 0, 30, 1, in_flight=0)
    assert current == 0
    scaler.cold_request()
    decision = scaler.decide(now + 0.1, 0)
    assert decision.replicas == 1 and "cold start" in decision.reason


def test_min_and_max_bound_every_decision() -> None:
    scaler = Scaler(policy(min_replicas=2, max_replicas=3, target=1))
    _, current = run(scaler, 0, 12, 2, in_flight=50)
    assert current == 3
    _, current = run(Scaler(policy(min_replicas=2, max_replicas=3, target=1)), 0, 30, 3, in_flight=0)
    assert current == 2


def test_rps_counts_arrivals_per_second() -> None:
    scaler = Scaler(policy(metric="rps", target=10))
    _, current = run(scaler, 0, 12, 1, arrivals=35)
    assert current == 4


def test_tokens_use_tokens_in_flight() -> None:
    scaler = Scaler(policy(metric="tokens", target=1000))
    _, current = run(scaler, 0, 12, 1, tokens=2500, in_flight=1)
    assert current == 3


def test_p99_scales_out_in_proportion_and_in_by_one_when_well_under() -> None:
    scaler = Scaler(policy(metric="p99", target=100))
    slow = tuple([0.05] * 98 + [0.3, 0.3])  # p99 300 ms against 100 ms
    _, current = run(scaler, 0, 1, 2, arrivals=100, in_flight=3, latencies=slow)
    assert current == 6
    fast = tuple([0.01] * 100)
    scaler = Scaler(policy(metric="p99", target=100))
    _, current = run(scaler, 0, 7, 4, arrivals=100, in_flight=3, latencies=fast)
    assert current == 3


def test_percentile_is_nearest_rank() -> None:
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"min_replicas": 5, "max_replicas": 2}, "more than max_replicas"),
        ({"min_replicas": -1}, "greater than or equal to 0"),
        ({"target": 0}, "greater than 0"),
        ({"stable_window_s": 5, "panic_window_s": 6}, "panic window is the short one"),
        ({"metric": "rps"}, "needs a target"),
        ({"metric": "latency"}, "'ongoing', 'rps', 'p99' or 'tokens'"),
    ],
)
def test_a_policy_that_cannot_work_is_refused_with_the_reason(fields: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Autoscale.model_validate(fields)


def test_noise_above_the_target_is_no_panic_only_load_at_the_threshold_is() -> None:
    scaler = Scaler(policy(metric="rps", target=25, upscale_delay_s=5))
    now, current = run(scaler, 0, 10, 1, arrivals=20)
    now += 1
    scaler.observe(reading(now, arrivals=46))  # the 2 s window: 33 requests/s, 1.3x one replica's 25
    decision = scaler.decide(now, current)
    assert not decision.panic and decision.replicas == 1
    now += 1
    scaler.observe(reading(now, arrivals=120))  # 83 requests/s: 3.3x
    decision = scaler.decide(now, current)
    assert decision.panic and decision.replicas == 4
