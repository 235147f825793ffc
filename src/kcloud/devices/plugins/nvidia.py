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
    # Ray: NvidiaGPUAcceleratorManager, resource "GPU", CUDA_VISIBLE_DEVICES
    # (ray-project/ray python/ray/_private/accelerators/nvidia_gpu.py @ 00501e2b);
    # Kubernetes: the NVIDIA device plugin's "nvidia.com/gpu".
    ray_resource = "GPU"
    k8s_resource = "nvidia.com/gpu"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    runtimes = ("onnxruntime-cuda",)

    @classmethod
    def visible_device_id(cls, device: Device) -> str:
        """The GPU's UUID where NVML gave one, else its index.

        CUDA reads an index in its own enumeration order (fastest first by default), which
        need not be NVML's; a UUID (`GPU-…`, as nvidia-smi prints it, which CUDA_VISIBLE_DEVICES
        accepts) names the same GPU whatever the order.
        """
        uuid = device.attributes.get("uuid", "")
        return uuid if uuid.startswith(("GPU-", "MIG-")) else super().visible_device_id(device)

    @classmethod
    def visibility_env(cls, device: Device) -> dict[str, str]:
        """`CUDA_VISIBLE_DEVICES`, and `CUDA_DEVICE_ORDER=PCI_BUS_ID` so that an index (the
        fallback) counts GPUs in PCI bus order, as NVML and nvidia-smi do."""
        env = super().visibility_env(device)
        if env:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

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
