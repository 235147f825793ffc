"""Energy over LoadGen's window: counter differences, interpolated, with reasons for every null."""

from __future__ import annotations

import time

import pytest

from kcloud.bench.energy import EnergyMeter, efficiency
from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Telemetry
from kcloud.devices.plugins.emulated import DeclaredDevice, EmulatedPlugin


class _Counter:
    """A counter that rises by `watts` per second of its own clock, read at chosen instants."""

    def __init__(self, watts: float, times: list[float], values: list[float | None] | None = None) -> None:
        self.watts, self.times = watts, list(times)
        self.values = values
        self.i = 0

    def read(self) -> dict[str, Telemetry]:
        t = self.times[min(self.i, len(self.times) - 1)]
        value = self.values[min(self.i, len(self.values) - 1)] if self.values else self.watts * t
        self.i += 1
        reasons = {} if value is not None else {"energy_joules": "RAPL energy_uj is root only here"}
        return {"dev": Telemetry("dev", timestamp=t, energy_joules=value, reasons=reasons)}


def _meter_over(counter: _Counter, readings: int) -> EnergyMeter:
    meter = EnergyMeter(["dev"], counter.read, interval_s=3600)
    for _ in range(readings):
        meter._read_all()
    return meter


def test_window_energy_is_the_interpolated_counter_difference():
    meter = _meter_over(_Counter(40.0, [100.0, 101.0, 102.5, 104.0]), 4)
    (device,) = meter.energy(100.25, 103.75)
    assert device.joules == pytest.approx(40.0 * 3.5)
    assert device.reason is None and device.modelled is False and device.readings == 4


def test_counter_going_backwards_is_null_with_the_reason():
    meter = _meter_over(_Counter(0, [1.0, 2.0, 3.0], values=[500.0, 510.0, 20.0]), 3)
    (device,) = meter.energy(1.0, 3.0)
    assert device.joules is None and "went backwards" in device.reason


def test_absent_counter_keeps_the_plugins_reason():
    meter = _meter_over(_Counter(0, [1.0, 2.0], values=[None]), 2)
    (device,) = meter.energy(1.0, 2.0)
    assert device.joules is None and device.reason == "RAPL energy_uj is root only here"


def test_window_outside_the_readings_is_not_guessed():
    meter = _meter_over(_Counter(10.0, [10.0, 11.0]), 2)
    (device,) = meter.energy(10.0, 30.0)
    assert device.joules is None and "do not cover" in device.reason


def test_emulated_device_energy_is_modelled_idle_power_over_the_window():
    spec = load_catalog().get("furiosa-rngd")
    plugin = EmulatedPlugin([DeclaredDevice(node="n", id="rngd0", chip="furiosa-rngd")])
    (device,) = plugin.devices
    meter = EnergyMeter.for_devices({device.uid: lambda: plugin.sample(device)}, interval_s=0.05)
    meter.start()
    started = time.time()
    time.sleep(0.3)  # energy accrues with wall time: there is nothing to wait on but the clock
    meter.stop()
    ended = time.time() - 0.01
    (reading,) = meter.energy(started, ended)
    idle_watts = plugin.idle_fraction * spec.tdp_watts.value
    assert reading.modelled is True and reading.reason is None
    assert reading.joules == pytest.approx(idle_watts * (ended - started), rel=0.1)


def test_mlperf_power_figures():
    assert efficiency("Offline", 50.0, samples=1000, queries=1) == {
        "name": "samples_per_joule",
        "unit": "samples/J",
        "value": 20.0,
    }
    assert efficiency("SingleStream", 2.0, samples=400, queries=400)["value"] == pytest.approx(5.0)
    assert efficiency("MultiStream", None, samples=80, queries=10)["value"] is None
    assert efficiency("Server", 0.0, samples=10, queries=10)["value"] is None
