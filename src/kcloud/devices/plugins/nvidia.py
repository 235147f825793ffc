"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported as `pynvml`).

No driver means no devices: `nvmlInit` failing is the normal case on a CPU-only machine. Energy
is NVML's own counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since driver load), which is
what to integrate: power readings are averaged over about a second on recent GPUs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kcloud.devices.catalog import match_spec
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvidiaPlugin(DevicePlugin):
    name = "nvidia"
    vendor = "nvidia"
    ray_resource = "GPU"
    k8s_resource = "nvidia.com/gpu"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    runtimes = ("onnxruntime-cuda",)

    def __init__(self, nvml: Any = None) -> None:
        """`nvml` is the `pynvml` module; tests pass a stand-in to simulate a missing driver."""
        self._nvml = nvml
        self._initialised = False
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _module(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def discover(self, node: str) -> list[Device]:
        try:
            nvml = self._module()
            if not self._initialised:
                nvml.nvmlInit()
                self._initialised = True
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            devices = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
                device = Device(
                    id=f"nvidia{index}",
                    node=node,
                    plugin=self.name,
                    vendor=self.vendor,
                    spec=match_spec(self.vendor, name),
                    name=name,
                    memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    runtimes=self.runtimes,
                    attributes={
                        "index": str(index),
                        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                        "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                        "driver_version": driver,
                    },
                )
                self._handles[device.uid] = handle
                devices.append(device)
            return devices
        except Exception as exc:  # no driver, no library, or a broken one: no devices here
            log.debug("nvidia: no devices (%s)", exc)
            return []

    def sample(self, device: Device) -> Telemetry:
        nvml = self._module()
        handle = self._handles.get(device.uid)
        if handle is None:
            return Telemetry(device.uid, healthy=False, reasons={"device": "not discovered by this plugin"})
        reasons: dict[str, str] = {}
        lost = False

        def read(field: str, call: Any, convert: Any) -> Any:
            nonlocal lost
            try:
                with self._lock:
                    return convert(call())
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST:
                    lost = True
                reasons[field] = f"NVML: {exc}"
                return None

        utilization = read(
            "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle), lambda u: u.gpu / 100
        )
        power = read("power_watts", lambda: nvml.nvmlDeviceGetPowerUsage(handle), lambda mw: mw / 1000)
        energy = read(
            "energy_joules", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle), lambda mj: mj / 1000
        )
        memory = read(
            "memory_used_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle), lambda m: int(m.used)
        )
        temperature = read(
            "temperature_celsius",
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            float,
        )
        return Telemetry(
            device_uid=device.uid,
            utilization=utilization,
            power_watts=power,
            energy_joules=energy,
            memory_used_bytes=memory,
            temperature_celsius=temperature,
            healthy=not lost,
            reasons=reasons,
        )

    def close(self) -> None:
        if self._initialised:
            try:
                self._module().nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown: %s", exc)
            self._initialised = False
            self._handles.clear()
