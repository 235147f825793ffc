"""`LoadMeter`: what the router tells the autoscaler about each model's load."""

from __future__ import annotations

import time

from kcloud.serving.load import LATENCIES_KEPT, LoadMeter


def test_a_reading_counts_in_flight_arrivals_latencies_and_sheds_since_the_last_one() -> None:
    meter = LoadMeter()
    meter.read("m")  # someone reads m from now on
    first, second, third = meter.arrived("m"), meter.arrived("m"), meter.arrived("m")
    time.sleep(0.01)
    meter.answered("m", first)
    meter.left("m", shed=True)
    meter.cold_wait("m", 1.5)
    reading = meter.read("m", tokens_in_flight=7)
    assert (reading.in_flight, reading.arrivals, reading.shed) == (1, 3, 1)
    assert len(reading.latencies_s) == 1 and reading.latencies_s[0] >= 0.01
    assert reading.cold_waits_s == (1.5,) and reading.tokens_in_flight == 7
    assert second and third
    again = meter.read("m")
    assert (again.in_flight, again.arrivals, again.shed) == (1, 0, 0)
    assert again.latencies_s == () and again.cold_waits_s == ()


def test_latencies_are_kept_only_for_a_model_someone_reads_and_at_most_the_newest() -> None:
    meter = LoadMeter()
    meter.answered("unread", meter.arrived("unread"))
    assert meter.read("unread").latencies_s == ()  # nobody read it before: nothing was kept
    for _ in range(LATENCIES_KEPT + 5):
        meter.answered("unread", meter.arrived("unread"))
    assert len(meter.read("unread").latencies_s) == LATENCIES_KEPT
    meter.forget("unread")
    meter.answered("unread", meter.arrived("unread"))
    assert meter.read("unread").latencies_s == ()
