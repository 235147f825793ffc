"""Emulated devices: catalog specs, always flagged, telemetry from the documented model."""

from __future__ import annotations

import threading

import pytest

from kcloud.devices.catalog import UnknownChipError
from kcloud.devices.plugins.emulated import DeclaredDevice, EmulatedPlugin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _plugin(clock: Clock, *chips: str, **kw) -> EmulatedPlugin:
    return EmulatedPlugin(
        [DeclaredDevice("gwangju-1", f"d{i}", chip) for i, chip in enumerate(chips)], clock=clock, **kw
    )


def test_devices_come_from_the_catalog_and_are_flagged(clock: Clock) -> None:
    plugin = _plugin(clock, "furiosa-rngd", "rebellions-atom-ca22")
    rngd, atom = plugin.devices
    assert rngd.spec.key == "furiosa-rngd" and rngd.vendor == "furiosa"
    assert atom.vendor == "rebellions" and atom.name == "RBLN-CA22"
    assert all(d.emulated for d in plugin.devices)
    assert rngd.memory_bytes == 48 * 2**30
    assert "host" in rngd.attributes["computes_on"]
    assert rngd.runtimes == ("onnxruntime-cpu",)
    assert plugin.discover("gwangju-1") == plugin.devices
    assert plugin.discover("elsewhere") == []


def test_unknown_chip_is_refused(clock: Clock) -> None:
    with pytest.raises(UnknownChipError):
        _plugin(clock, "furiosa-rngdd")


def test_idle_device_draws_idle_power(clock: Clock) -> None:
    plugin = _plugin(clock, "furiosa-rngd")  # TDP 180 W
    [device] = plugin.devices
    clock.now += 100
    reading = plugin.sample(device)
    assert reading.modelled
    assert reading.utilization == 0.0
    assert reading.power_watts == pytest.approx(0.3 * 180)
    assert reading.energy_joules == pytest.approx(0.3 * 180 * 100)


def test_work_raises_utilisation_power_and_energy(clock: Clock) -> None:
    plugin = _plugin(clock, "furiosa-rngd", window_s=10.0, idle_fraction=0.25)
    [device] = plugin.devices
    clock.now += 20
    plugin.record_work(device.uid, 5.0)  # busy for the last 5 s
    reading = plugin.sample(device)
    assert reading.utilization == pytest.approx(0.5)
    idle = 0.25 * 180
    assert reading.power_watts == pytest.approx(idle + (180 - idle) * 0.5)
    assert reading.energy_joules == pytest.approx(idle * 20 + (180 - idle) * 5.0)
    clock.now += 8  # the work ran over [15, 20] s; the window is now [18, 28]: 2 s inside
    assert plugin.sample(device).utilization == pytest.approx(0.2)
    clock.now += 10  # all of it slid out; the energy it cost stays counted
    later = plugin.sample(device)
    assert later.utilization == 0.0
    assert later.energy_joules == pytest.approx(idle * 38 + (180 - idle) * 5.0)


def test_utilisation_is_capped_at_one(clock: Clock) -> None:
    plugin = _plugin(clock, "rebellions-atom-ca22", window_s=10.0)
    [device] = plugin.devices
    clock.now += 30
    for _ in range(4):
        plugin.record_work(device.uid, 10.0)  # four replicas busy at once
    reading = plugin.sample(device)
    assert reading.utilization == 1.0
    assert reading.power_watts == pytest.approx(90.0)


def test_unknown_tdp_gives_null_power_with_reason(clock: Clock) -> None:
    plugin = _plugin(clock, "sapeon-x220-enterprise")
    [device] = plugin.devices
    plugin.record_work(device.uid, 1.0)
    reading = plugin.sample(device)
    assert reading.utilization is not None and reading.modelled
    assert reading.power_watts is None and reading.energy_joules is None
    assert "no TDP" in reading.reasons["power_watts"]


def test_record_work_refuses_bad_input(clock: Clock) -> None:
    plugin = _plugin(clock, "furiosa-rngd")
    with pytest.raises(KeyError):
        plugin.record_work("nowhere/x", 1.0)
    with pytest.raises(ValueError):
        plugin.record_work(plugin.devices[0].uid, -1.0)


def test_model_parameters_are_checked(clock: Clock) -> None:
    with pytest.raises(ValueError):
        _plugin(clock, idle_fraction=1.5)
    with pytest.raises(ValueError):
        _plugin(clock, window_s=0)


def test_record_work_is_thread_safe(clock: Clock) -> None:
    plugin = _plugin(clock, "furiosa-rngd", window_s=1000.0)
    [device] = plugin.devices
    clock.now += 1000

    def worker() -> None:
        for _ in range(1000):
            plugin.record_work(device.uid, 0.001)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert plugin.sample(device).utilization == pytest.approx(8.0 / 1000.0)
