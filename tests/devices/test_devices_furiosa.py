"""FuriosaAI plugin against a stand-in for the vendor binding.

The stand-in mirrors `furiosa_smi_py` 2026.1.2 (PyPI `furiosa-smi-py`; API documented in its
docstrings and at developer.furiosa.ai .../system_management_interface/furiosa_smi_lib.html):
module functions `init()`, `list_devices()`, `create_default_observer()`, `driver_info()`;
`Device.device_info()`, `.liveness()`, `.power_consumption()` (float, W),
`.device_temperature()` → `DeviceTemperature.soc_peak()/.ambient()` (°C);
`DeviceInfo.arch()` (an `Arch` whose str is e.g. `"rngd"`), `.name()`, `.uuid()`, `.serial()`,
`.bdf()`, `.core_num()`, `.firmware_version()` → `VersionInfo.major()/.minor()/.patch()`;
`Observer.get_core_utilization(device)` → `[CoreUtilization.core()/.pe_usage_percentage()]`.
The real binding cannot run without an RNGD and its driver.
"""

from __future__ import annotations

import sys
import types

import pytest

from kcloud.devices.plugins.furiosa import FuriosaPlugin


class Arch:
    def __init__(self, name: str) -> None:
        self._name = name

    def __str__(self) -> str:
        return self._name


class VersionInfo:
    def major(self) -> int:
        return 2025

    def minor(self) -> int:
        return 3

    def patch(self) -> int:
        return 0


class DeviceInfo:
    def __init__(self, index: int, arch: str) -> None:
        self._index, self._arch = index, arch

    def arch(self) -> Arch:
        return Arch(self._arch)

    def name(self) -> str:
        return f"npu{self._index}"

    def uuid(self) -> str:
        return f"C0413086-0708-460{self._index}"

    def serial(self) -> str:
        return f"RNG2604010018{self._index}Q"

    def bdf(self) -> str:
        return f"0000:{3 + self._index:02x}:00.0"

    def core_num(self) -> int:
        return 8

    def firmware_version(self) -> VersionInfo:
        return VersionInfo()

    def index(self) -> int:
        return self._index


class DeviceTemperature:
    def __init__(self, soc_peak: float) -> None:
        self._soc_peak = soc_peak

    def soc_peak(self) -> float:
        return self._soc_peak

    def ambient(self) -> float:
        return self._soc_peak - 10


class CoreUtilization:
    def __init__(self, core: int, percent: float) -> None:
        self._core, self._percent = core, percent

    def core(self) -> int:
        return self._core

    def pe_usage_percentage(self) -> float:
        return self._percent

    def time_window_mil(self) -> int:
        return 1000


class Device:
    def __init__(self, index: int, arch: str = "rngd", alive: bool = True, power: float = 38.4) -> None:
        self.index, self._arch, self._alive, self._power = index, arch, alive, power

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(self.index, self._arch)

    def liveness(self) -> bool:
        return self._alive

    def power_consumption(self) -> float:
        return self._power

    def device_temperature(self) -> DeviceTemperature:
        return DeviceTemperature(40.98)


class Observer:
    def get_core_utilization(self, device: Device) -> list[CoreUtilization]:
        return [CoreUtilization(core, 50.0 if core < 4 else 0.0) for core in range(8)]


def fake_binding(devices: list[Device]) -> types.ModuleType:
    module = types.ModuleType("furiosa_smi_py")
    module.init = lambda: None
    module.list_devices = lambda: list(devices)
    module.create_default_observer = Observer
    module.driver_info = VersionInfo
    return module


def test_discovers_and_samples_rngd() -> None:
    plugin = FuriosaPlugin(smi_module=fake_binding([Device(0), Device(1, alive=False)]))
    devices = plugin.discover("gwangju-1")
    assert [d.uid for d in devices] == ["gwangju-1/npu0", "gwangju-1/npu1"]
    first = devices[0]
    assert first.vendor == "furiosa" and first.name == "RNGD"
    assert first.spec.key == "furiosa-rngd"
    assert first.attributes["pci_bus_id"] == "0000:03:00.0"
    assert first.attributes["firmware"] == "2025.3.0"
    assert first.healthy and not devices[1].healthy
    reading = plugin.sample(first)
    assert reading.power_watts == pytest.approx(38.4)
    assert reading.temperature_celsius == pytest.approx(40.98)
    assert reading.utilization == pytest.approx(0.25)  # 4 of 8 PEs at 50 %
    assert reading.energy_joules is None and "energy_joules" in reading.reasons
    assert not plugin.sample(devices[1]).healthy


def test_warboy_and_unknown_archs_map_honestly() -> None:
    plugin = FuriosaPlugin(smi_module=fake_binding([Device(0, arch="warboy"), Device(1, arch="rngd-max")]))
    warboy, rngd_max = plugin.discover("n")
    assert warboy.spec.key == "furiosa-warboy"
    assert rngd_max.spec.key == "furiosa-unknown"  # not the RNGD row: its figures differ


def test_failing_reading_is_null_with_reason() -> None:
    class Broken(Device):
        def power_consumption(self) -> float:
            raise RuntimeError("device busy")

    plugin = FuriosaPlugin(smi_module=fake_binding([Broken(0)]))
    [device] = plugin.discover("n")
    reading = plugin.sample(device)
    assert reading.power_watts is None and "device busy" in reading.reasons["power_watts"]


def test_missing_binding_gives_no_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "furiosa_smi_py", None)
    monkeypatch.setitem(sys.modules, "furiosa_smi", None)
    assert FuriosaPlugin().discover("n") == []


def test_binding_without_driver_gives_no_devices() -> None:
    module = fake_binding([])

    def no_driver() -> None:
        raise RuntimeError("failed to initialize furiosa-smi: no device driver")

    module.init = no_driver
    assert FuriosaPlugin(smi_module=module).discover("n") == []
