"""NVIDIA plugin: no driver means no devices; on a GPU machine, real NVML readings (`-m gpu`)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pynvml
import pytest

from kcloud.devices.plugins.nvidia import NvidiaPlugin


def _nvml_with(**overrides):
    """The real pynvml module's names, some calls replaced: NVML itself cannot run here."""
    names = {name: getattr(pynvml, name) for name in dir(pynvml) if not name.startswith("__")}
    names.update(overrides)
    return SimpleNamespace(**names)


def _gpu_present() -> bool:
    plugin = NvidiaPlugin()
    try:
        return bool(plugin.discover("probe"))
    finally:
        plugin.close()


GPU = _gpu_present()
needs_gpu = pytest.mark.skipif(not GPU, reason="no NVIDIA GPU with a driver on this machine")


def test_missing_driver_library_gives_no_devices() -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    assert NvidiaPlugin(nvml=_nvml_with(nvmlInit=no_library)).discover("n") == []


def test_driver_not_loaded_gives_no_devices() -> None:
    def not_loaded() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    assert NvidiaPlugin(nvml=_nvml_with(nvmlInit=not_loaded)).discover("n") == []


@pytest.mark.skipif(GPU, reason="this machine has a GPU; the no-driver path is tested above")
def test_this_machine_without_driver_has_no_nvidia_devices() -> None:
    assert NvidiaPlugin().discover("n") == []


def test_sample_converts_units_and_reports_unsupported_readings() -> None:
    handle = object()

    def unsupported(*_: object) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    nvml = _nvml_with(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: handle,
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: "GPU-0000",
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId="00000000:1B:00.0"),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=85_520_809_984, used=1_048_576),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=37),
        nvmlDeviceGetPowerUsage=lambda h: 123_456,  # mW
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 9_876_543,  # mJ
        nvmlDeviceGetTemperature=unsupported,
    )
    plugin = NvidiaPlugin(nvml=nvml)
    [device] = plugin.discover("n")
    assert device.spec.key == "nvidia-h100-sxm"
    assert device.attributes["index"] == "0"
    reading = plugin.sample(device)
    assert reading.utilization == pytest.approx(0.37)
    assert reading.power_watts == pytest.approx(123.456)
    assert reading.energy_joules == pytest.approx(9876.543)
    assert reading.memory_used_bytes == 1_048_576
    assert reading.temperature_celsius is None and "NVML" in reading.reasons["temperature_celsius"]
    assert reading.healthy


def test_lost_gpu_is_unhealthy() -> None:
    def lost(*_: object) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    nvml = _nvml_with(
        nvmlInit=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "550",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetName=lambda h: b"NVIDIA L4",
        nvmlDeviceGetUUID=lambda h: b"GPU-1",
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=b"0000:01:00.0"),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=1, used=0),
        nvmlDeviceGetUtilizationRates=lost,
        nvmlDeviceGetPowerUsage=lost,
        nvmlDeviceGetTotalEnergyConsumption=lost,
        nvmlDeviceGetTemperature=lost,
    )
    plugin = NvidiaPlugin(nvml=nvml)
    [device] = plugin.discover("n")
    assert device.name == "NVIDIA L4"
    assert not plugin.sample(device).healthy


# ---------------------------------------------------------------- on a real GPU (pytest -m gpu)


@pytest.fixture
def gpu_plugin():
    plugin = NvidiaPlugin()
    yield plugin
    plugin.close()


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_discovery(gpu_plugin: NvidiaPlugin) -> None:
    devices = gpu_plugin.discover("gpu-node")
    assert devices
    for index, device in enumerate(devices):
        assert device.id == f"nvidia{index}"
        assert device.vendor == "nvidia" and device.name.startswith("NVIDIA")
        assert device.memory_bytes and device.memory_bytes > 2**30
        assert device.attributes["uuid"].startswith(("GPU-", "MIG-"))
        # a catalogued name maps to its row; any other to the all-unknown spec, never a neighbour's
        assert device.spec.key.startswith("nvidia-")


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_telemetry_and_energy_counter(gpu_plugin: NvidiaPlugin) -> None:
    device = gpu_plugin.discover("gpu-node")[0]
    first = gpu_plugin.sample(device)
    assert first.power_watts is not None and 0 < first.power_watts < 2000
    assert first.temperature_celsius is not None and 0 < first.temperature_celsius < 120
    assert first.memory_used_bytes is not None and first.memory_used_bytes <= device.memory_bytes
    assert first.utilization is not None and 0.0 <= first.utilization <= 1.0
    assert first.energy_joules is not None and first.energy_joules > 0
    deadline = time.monotonic() + 5.0
    second = gpu_plugin.sample(device)
    while second.energy_joules == first.energy_joules and time.monotonic() < deadline:
        time.sleep(0.1)  # the counter updates on the driver's own cadence
        second = gpu_plugin.sample(device)
    assert second.energy_joules > first.energy_joules
    assert not second.modelled and second.healthy
