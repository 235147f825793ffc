"""FuriosaAI NPUs (Warboy, RNGD) through the vendor's `furiosa_smi_py` binding.

API used (furiosa-smi-py 2026.1.x, PyPI; developer.furiosa.ai ... furiosa_smi_lib.html):
`init()`, `list_devices()` → `Device` with `device_info()` (`arch()`, `name()`, `uuid()`,
`serial()`, `bdf()`, `core_num()`, `firmware_version()`), `liveness()`, `power_consumption()` (W),
`device_temperature()` (`soc_peak()`, `ambient()`, °C); utilisation per PE core from
`create_default_observer().get_core_utilization(device)` (`pe_usage_percentage()`).
From SDK 2026.4 the package is `furiosa_smi` and needs no `init()`; both are tried.

The binding is not a kcloud dependency: where it is not installed there are no devices.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from kcloud.devices.catalog import match_spec
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin

log = logging.getLogger(__name__)

MODULE_NAMES = ("furiosa_smi_py", "furiosa_smi")


def _version(info: Any) -> str:
    try:
        return f"{info.major()}.{info.minor()}.{info.patch()}"
    except Exception:
        return str(info)


class FuriosaPlugin(DevicePlugin):
    name = "furiosa"
    vendor = "furiosa"
    # Ray: FuriosaAcceleratorManager, resource "FURIOSA", visibility variable FURIOSA_DEVICES
    # written as `npu:<index>` tokens, the form furiosa-llm's `--devices` flag takes
    # (ray-project/ray python/ray/_private/accelerators/furiosa.py @ 039857b1; the PR text said
    # FURIOSA_VISIBLE_DEVICES, the merged code reads FURIOSA_DEVICES).
    # Kubernetes: "furiosa.ai/rngd", one per card (developer.furiosa.ai, device plugin).
    ray_resource = "FURIOSA"
    k8s_resource = "furiosa.ai/rngd"
    visible_devices_env = "FURIOSA_DEVICES"
    runtimes = ("furiosa-llm",)

    @classmethod
    def visible_device_id(cls, device: Device) -> str:
        """`npu:<index>`, as Ray writes FURIOSA_DEVICES and furiosa-llm reads it."""
        return f"npu:{super().visible_device_id(device)}"

    def __init__(self, smi_module: Any = None) -> None:
        """`smi_module` stands in for the vendor binding (tests); default: import it."""
        self._smi = smi_module
        self._handles: dict[str, Any] = {}
        self._observer: Any = None
        self._lock = threading.Lock()

    def _module(self) -> Any:
        if self._smi is None:
            errors = []
            for module_name in MODULE_NAMES:
                try:
                    self._smi = importlib.import_module(module_name)
                    break
                except ImportError as exc:
                    errors.append(str(exc))
            else:
                raise ImportError("; ".join(errors))
        return self._smi

    def discover(self, node: str) -> list[Device]:
        try:
            smi = self._module()
            if hasattr(smi, "init"):
                smi.init()
            devices = []
            for handle in smi.list_devices():
                info = handle.device_info()
                arch = str(info.arch())
                device = Device(
                    id=str(info.name()),
                    node=node,
                    plugin=self.name,
                    vendor=self.vendor,
                    spec=match_spec(self.vendor, arch),
                    name=arch.upper(),
                    healthy=bool(handle.liveness()),
                    runtimes=self.runtimes,
                    attributes={
                        "uuid": str(info.uuid()),
                        "serial": str(info.serial()),
                        "pci_bus_id": str(info.bdf()),
                        "cores": str(info.core_num()),
                        "firmware": _version(info.firmware_version()),
                    },
                )
                self._handles[device.uid] = handle
                devices.append(device)
            return devices
        except Exception as exc:  # binding or driver absent: no devices
            log.debug("furiosa: no devices (%s)", exc)
            return []

    def _utilization(self, handle: Any) -> float | None:
        with self._lock:
            if self._observer is None:
                self._observer = self._module().create_default_observer()
            cores = self._observer.get_core_utilization(handle)
        if not cores:
            return None
        return sum(core.pe_usage_percentage() for core in cores) / len(cores) / 100

    def sample(self, device: Device) -> Telemetry:
        handle = self._handles.get(device.uid)
        if handle is None:
            return Telemetry(device.uid, healthy=False, reasons={"device": "not discovered by this plugin"})
        reasons: dict[str, str] = {
            "energy_joules": "furiosa-smi reports power, not an energy counter",
            "memory_used_bytes": "furiosa-smi documents no memory-in-use reading",
        }

        def read(field: str, call: Any) -> Any:
            try:
                value = call()
            except Exception as exc:
                reasons[field] = f"furiosa-smi: {exc}"
                return None
            if value is None:
                reasons[field] = "furiosa-smi gave no value"
            return value

        alive = read("healthy", handle.liveness)
        return Telemetry(
            device_uid=device.uid,
            utilization=read("utilization", lambda: self._utilization(handle)),
            power_watts=read("power_watts", lambda: float(handle.power_consumption())),
            energy_joules=None,
            memory_used_bytes=None,
            temperature_celsius=read(
                "temperature_celsius", lambda: float(handle.device_temperature().soc_peak())
            ),
            healthy=bool(alive),
            reasons=reasons,
        )
