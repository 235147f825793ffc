"""Emulated devices: accelerators declared in a farm file, described by the catalog, computing on the host.

They let every control-plane path run without the hardware, and they never pass for it: each
`Device` has `emulated=True` and every `Telemetry` has `modelled=True`.

The telemetry model, and its one parameter:
- utilisation = busy seconds reported through `record_work` inside a sliding window
  (`window_s`, default 10 s) divided by the window, capped at 1;
- power = idle + (TDP - idle) x utilisation, with idle = `idle_fraction` x TDP
  (default 0.3: an assumption, not a measurement; set it per farm where a profile says better);
- energy = the exact integral of that power since the device was declared:
  idle x elapsed + (TDP - idle) x busy seconds (busy capped at elapsed).
Where the catalog has no TDP, power and energy are `None` with the reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin

DEFAULT_WINDOW_S = 10.0
DEFAULT_IDLE_FRACTION = 0.3
GIB = 2**30


@dataclass(frozen=True)
class DeclaredDevice:
    """One device a farm file declares: where it is and which catalog row it is."""

    node: str
    id: str
    chip: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Load:
    started: float
    busy_total: float = 0.0
    #: (end time, busy seconds) of each piece of work still inside the window.
    recent: deque[tuple[float, float]] = field(default_factory=deque)


class EmulatedPlugin(DevicePlugin):
    name = "emulated"
    vendor = "emulated"
    ray_resource = None
    k8s_resource = None
    visible_devices_env = None
    runtimes = ("onnxruntime-cpu",)

    def __init__(
        self,
        declared: Iterable[DeclaredDevice] = (),
        *,
        window_s: float = DEFAULT_WINDOW_S,
        idle_fraction: float = DEFAULT_IDLE_FRACTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        if not 0.0 <= idle_fraction <= 1.0:
            raise ValueError(f"idle_fraction must be within [0, 1], got {idle_fraction}")
        self.window_s = window_s
        self.idle_fraction = idle_fraction
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._load: dict[str, _Load] = {}
        self.declare(declared)

    def declare(self, declared: Iterable[DeclaredDevice]) -> list[Device]:
        """Add devices; their chip keys must exist in the catalog (`UnknownChipError` otherwise)."""
        catalog = load_catalog()
        added = []
        for item in declared:
            spec = catalog.get(item.chip)
            memory = spec.memory_gib.value
            device = Device(
                id=item.id,
                node=item.node,
                plugin=self.name,
                vendor=spec.vendor,
                spec=spec,
                name=spec.card or spec.chip,  # what a vendor tool would call it
                emulated=True,
                memory_bytes=int(memory * GIB) if memory is not None else None,
                runtimes=self.runtimes,
                attributes={
                    "computes_on": "host CPU (emulated device: no accelerator present)",
                    "memory_source": "catalog" if memory is not None else "unknown",
                    **item.attributes,
                },
            )
            with self._lock:
                if device.uid in self._devices:
                    raise ValueError(f"emulated device {device.uid} declared twice")
                self._devices[device.uid] = device
                self._load[device.uid] = _Load(started=self._clock())
            added.append(device)
        return added

    @property
    def devices(self) -> list[Device]:
        with self._lock:
            return list(self._devices.values())

    def discover(self, node: str) -> list[Device]:
        return [d for d in self.devices if d.node == node]

    def record_work(self, device_uid: str, busy_seconds: float) -> None:
        """Tell the model that `device_uid` just spent `busy_seconds` computing. Thread-safe."""
        if busy_seconds < 0:
            raise ValueError(f"busy_seconds must be >= 0, got {busy_seconds}")
        now = self._clock()
        with self._lock:
            load = self._load.get(device_uid)
            if load is None:
                raise KeyError(f"no emulated device {device_uid!r}")
            load.busy_total += busy_seconds
            load.recent.append((now, busy_seconds))
            self._trim(load, now)

    def _trim(self, load: _Load, now: float) -> None:
        while load.recent and load.recent[0][0] <= now - self.window_s:
            load.recent.popleft()

    def _busy_in_window(self, load: _Load, now: float) -> float:
        """Busy seconds overlapping [now - window, now], each piece taken to end when recorded."""
        start = now - self.window_s
        busy = 0.0
        for end, seconds in load.recent:
            busy += max(0.0, end - max(start, end - seconds))
        return busy

    def sample(self, device: Device) -> Telemetry:
        now = self._clock()
        with self._lock:
            load = self._load.get(device.uid)
            if load is None:
                return Telemetry(device.uid, modelled=True, healthy=False,
                                 reasons={"device": "not declared to this plugin"})
            self._trim(load, now)
            utilization = min(1.0, self._busy_in_window(load, now) / self.window_s)
            elapsed = max(now - load.started, 0.0)
            busy_total = min(load.busy_total, elapsed)

        reasons = {
            "memory_used_bytes": "emulated device: memory use is not modelled",
            "temperature_celsius": "emulated device: temperature is not modelled",
        }
        tdp = device.spec.tdp_watts.value
        if tdp is None:
            why = f"catalog has no TDP for {device.spec.key}; power cannot be modelled"
            power = energy = None
            reasons["power_watts"] = why
            reasons["energy_joules"] = why
        else:
            idle = self.idle_fraction * tdp
            power = idle + (tdp - idle) * utilization
            energy = idle * elapsed + (tdp - idle) * busy_total
        return Telemetry(
            device_uid=device.uid,
            utilization=utilization,
            power_watts=power,
            energy_joules=energy,
            memory_used_bytes=None,
            temperature_celsius=None,
            healthy=True,
            modelled=True,
            reasons=reasons,
        )
