"""Usage counters and energy attribution by share of device time, on a scripted energy counter."""

from __future__ import annotations

from datetime import date

import pytest

from kcloud.tenancy.metering import EnergyReading, UsageBucket, UsageMeter

DAY = date(2025, 1, 2)
A = UsageBucket(DAY, 1, 11, "m", "a", "pa")
B = UsageBucket(DAY, 2, 22, "m", "b", "pb")


class Counter:
    """A device energy counter whose readings the test sets."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[float | None, bool, float]] = {}

    def set(self, uid: str, joules: float | None, at: float, modelled: bool = False) -> None:
        self.values[uid] = (joules, modelled, at)

    def __call__(self, uid: str) -> EnergyReading:
        joules, modelled, at = self.values[uid]
        return EnergyReading(joules=joules, modelled=modelled, at=at)


def test_counts_add_up_per_bucket():
    meter = UsageMeter()
    meter.record(A, samples=3, device_seconds={"n/d0": 0.5})
    meter.record(A, samples=1, error=True)
    meter.record(B, samples=2, device_seconds={"n/d0": 0.25})
    taken = meter.take_interval()
    assert taken[A].requests == 2 and taken[A].samples == 4 and taken[A].errors == 1
    assert taken[A].device_seconds == pytest.approx(0.5)
    assert taken[B].requests == 1 and taken[A].energy_joules is None
    assert meter.take_interval() == {}


def test_energy_split_by_share_of_device_time_and_idle_not_billed():
    counter = Counter()
    meter = UsageMeter(counter)
    counter.set("n/d0", 1000.0, at=0.0)
    meter.prime(["n/d0"])
    meter.record(A, samples=1, device_seconds={"n/d0": 3.0})
    meter.record(B, samples=1, device_seconds={"n/d0": 1.0})
    counter.set("n/d0", 1100.0, at=10.0)  # 100 J over 10 s; the device was busy 4 s of them
    taken = meter.take_interval()
    assert taken[A].energy_joules == pytest.approx(30.0)
    assert taken[B].energy_joules == pytest.approx(10.0)
    assert taken[A].energy_joules_modelled is None


def test_a_fully_busy_device_hands_out_all_its_energy():
    counter = Counter()
    meter = UsageMeter(counter)
    counter.set("n/d0", 0.0, at=0.0, modelled=True)
    meter.prime(["n/d0"])
    meter.record(A, device_seconds={"n/d0": 6.0})  # two replicas on one device: 8 s of work in 5 s
    meter.record(B, device_seconds={"n/d0": 2.0})
    counter.set("n/d0", 40.0, at=5.0, modelled=True)
    taken = meter.take_interval()
    assert taken[A].energy_joules_modelled == pytest.approx(30.0)
    assert taken[B].energy_joules_modelled == pytest.approx(10.0)
    assert taken[A].energy_joules is None  # modelled energy is labelled, never mixed with measured


def test_devices_without_a_counter_leave_energy_unknown():
    counter = Counter()
    meter = UsageMeter(counter)
    counter.set("n/d0", None, at=0.0)
    meter.prime(["n/d0"])
    meter.record(A, device_seconds={"n/d0": 1.0})
    counter.set("n/d0", None, at=1.0)
    assert meter.take_interval()[A].energy_joules is None


def test_first_interval_of_an_unprimed_device_is_not_attributed_then_the_next_is():
    counter = Counter()
    meter = UsageMeter(counter)
    meter.record(A, device_seconds={"n/d0": 1.0})
    counter.set("n/d0", 50.0, at=1.0)
    assert meter.take_interval()[A].energy_joules is None
    meter.record(A, device_seconds={"n/d0": 2.0})
    counter.set("n/d0", 60.0, at=3.0)
    assert meter.take_interval()[A].energy_joules == pytest.approx(10.0)


def test_a_counter_going_backwards_is_not_attributed():
    counter = Counter()
    meter = UsageMeter(counter)
    counter.set("n/d0", 500.0, at=0.0)
    meter.prime(["n/d0"])
    meter.record(A, device_seconds={"n/d0": 1.0})
    counter.set("n/d0", 5.0, at=1.0)
    assert meter.take_interval()[A].energy_joules is None


def test_restore_puts_an_unwritten_interval_back():
    meter = UsageMeter()
    meter.record(A, samples=2)
    taken = meter.take_interval()
    meter.record(A, samples=1)
    meter.restore(taken)
    again = meter.take_interval()
    assert again[A].requests == 2 and again[A].samples == 3


def test_energy_is_attributed_only_when_asked_with_the_device_time_accumulated_since():
    """Counts are written every 100 ms, energy every 2 s (reading a device counter is a driver
    call): device time piles up across the takes in between, and the attributing take hands the
    energy to a bucket even when its requests went out in an earlier take."""
    counter = Counter()
    meter = UsageMeter(counter)
    counter.set("n/d0", 0.0, at=0.0)
    meter.prime(["n/d0"])
    meter.record(A, samples=1, device_seconds={"n/d0": 1.0})
    first = meter.take_interval(attribute_energy=False)
    assert first[A].requests == 1 and first[A].energy_joules is None
    meter.record(B, samples=1, device_seconds={"n/d0": 3.0})
    counter.set("n/d0", 80.0, at=4.0)  # 80 J over 4 s, the device busy all of it
    second = meter.take_interval(attribute_energy=True)
    assert second[A].requests == 0 and second[A].energy_joules == pytest.approx(20.0)
    assert second[B].requests == 1 and second[B].energy_joules == pytest.approx(60.0)
