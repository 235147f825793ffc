"""`Device` and `Telemetry`: one accelerator on one node, and one reading of it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kcloud.devices.spec import ChipSpec


@dataclass(frozen=True)
class Device:
    """One accelerator (or CPU socket) on one node.

    `id` is unique within its node (`cpu0`, `nvidia0`, `rbln0`, `npu0`, `gwangju-1/rngd3`);
    `uid` is unique in the farm. `emulated` devices exist only in a farm file and compute on
    the host; every API that shows one must say so.
    """

    id: str
    node: str
    plugin: str
    vendor: str
    spec: ChipSpec
    name: str
    emulated: bool = False
    healthy: bool = True
    memory_bytes: int | None = None
    runtimes: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"{self.node}/{self.id}"


@dataclass(frozen=True)
class Telemetry:
    """One reading of a device. `None` means the sensor is absent; `reasons` says why.

    `modelled` is True when the figures come from a model (emulated devices) rather than a
    sensor. `energy_joules` is a monotonic counter since an arbitrary origin: integrate it by
    differences, never by summing power samples.
    """

    device_uid: str
    timestamp: float = field(default_factory=time.time)
    utilization: float | None = None
    power_watts: float | None = None
    energy_joules: float | None = None
    memory_used_bytes: int | None = None
    temperature_celsius: float | None = None
    healthy: bool = True
    modelled: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
