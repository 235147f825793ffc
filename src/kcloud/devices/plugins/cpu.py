"""The host CPU as a device: model, cores and memory, utilisation, and RAPL energy where readable.

The whole host CPU (all sockets) is one device, `cpu0`: runtimes schedule onto the host, not
onto a socket. Energy comes from the Linux powercap RAPL counters, which count package (and
DRAM) energy, not wall power; where they are absent or root-only the figure is `None` and the
reason says which. Power is derived from energy differences, never estimated.
"""

from __future__ import annotations

import logging
import platform
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
#: Top-level RAPL domains are packages (`intel-rapl:0`, `intel-rapl:1`, ...); sub-domains
#: (`intel-rapl:0:0`, core/uncore/dram) are parts of them and would double-count.
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")
#: Utilisation over a shorter window than this is noise; the first reading waits this long.
MIN_UTIL_WINDOW_S = 0.1


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model as the kernel reports it (`model name`), falling back to `platform`."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass
class _Domain:
    path: Path
    max_range_uj: int
    last_raw_uj: int
    total_j: float


class RaplEnergyCounter:
    """A monotonic energy counter in joules summed over the RAPL package domains.

    Each `energy_uj` wraps at `max_energy_range_uj`; keeping the last raw value per domain and
    adding the wrapped difference turns it into a counter that only grows, as long as it is
    read at least once per wrap period (minutes at full load).
    """

    def __init__(self, root: Path = POWERCAP_ROOT, read: Callable[[Path], str] | None = None) -> None:
        self._root = root
        self._read = read or (lambda p: p.read_text(encoding="ascii"))
        self._domains: list[_Domain] | None = None
        self._lock = threading.Lock()
        #: Why there is no reading (`None` while readings work).
        self.unavailable_reason: str | None = None
        self._open()

    def _open(self) -> None:
        if not self._root.is_dir():
            self.unavailable_reason = f"no RAPL powercap on this machine ({self._root} absent)"
            return
        paths = sorted(p for p in self._root.iterdir() if _PACKAGE_DOMAIN.fullmatch(p.name))
        if not paths:
            self.unavailable_reason = (
                f"no RAPL powercap on this machine (no intel-rapl domains in {self._root})"
            )
            return
        domains = []
        try:
            for path in paths:
                raw = int(self._read(path / "energy_uj"))
                max_range = int(self._read(path / "max_energy_range_uj"))
                domains.append(_Domain(path, max_range, raw, raw / 1e6))
        except PermissionError:
            self.unavailable_reason = "RAPL energy_uj is not readable: permission denied (root only here)"
            return
        except (OSError, ValueError) as exc:
            self.unavailable_reason = f"RAPL energy_uj unreadable: {exc}"
            return
        self._domains = domains

    def read_joules(self) -> float | None:
        """Energy since an arbitrary origin, or `None` (see `unavailable_reason`)."""
        if self._domains is None:
            return None
        with self._lock:
            try:
                for domain in self._domains:
                    raw = int(self._read(domain.path / "energy_uj"))
                    delta = raw - domain.last_raw_uj
                    if delta < 0:  # the counter wrapped
                        delta += domain.max_range_uj
                    domain.total_j += delta / 1e6
                    domain.last_raw_uj = raw
            except PermissionError:
                self.unavailable_reason = "RAPL energy_uj is not readable: permission denied (root only here)"
                self._domains = None
                return None
            except (OSError, ValueError) as exc:
                self.unavailable_reason = f"RAPL energy_uj unreadable: {exc}"
                self._domains = None
                return None
            return sum(d.total_j for d in self._domains)


def _cpu_temperature() -> float | None:
    """The package temperature where the kernel exposes one (coretemp, k10temp, zenpower)."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    for chip, preferred in (("coretemp", "Package id 0"), ("k10temp", "Tctl"), ("zenpower", "Tdie")):
        readings = sensors.get(chip) or []
        for reading in readings:
            if reading.label == preferred:
                return float(reading.current)
        if readings:
            return float(readings[0].current)
    return None


class CpuPlugin(DevicePlugin):
    """The host CPU. Always present, so a farm always has somewhere to run."""

    name = "cpu"
    vendor = "cpu"
    ray_resource = "CPU"
    k8s_resource = "cpu"
    visible_devices_env = None
    runtimes = ("onnxruntime-cpu",)

    def __init__(self, powercap_root: Path = POWERCAP_ROOT) -> None:
        self._powercap_root = powercap_root
        self._rapl: RaplEnergyCounter | None = None
        self._lock = threading.Lock()
        self._last_times: tuple[float, float, float] | None = None  # (wall, busy, total)
        self._last_energy: tuple[float, float] | None = None  # (wall, joules)

    def discover(self, node: str) -> list[Device]:
        try:
            self._rapl = RaplEnergyCounter(self._powercap_root)
            self._prime()
            memory = psutil.virtual_memory().total
            return [
                Device(
                    id="cpu0",
                    node=node,
                    plugin=self.name,
                    vendor=self.vendor,
                    spec=load_catalog().get("cpu-generic"),
                    name=cpu_model_name(),
                    memory_bytes=memory,
                    runtimes=self.runtimes,
                    attributes={
                        "cores_logical": str(psutil.cpu_count(logical=True) or ""),
                        "cores_physical": str(psutil.cpu_count(logical=False) or ""),
                        "arch": platform.machine(),
                    },
                )
            ]
        except Exception as exc:  # discovery never takes the node down
            log.warning("cpu discovery failed: %s", exc)
            return []

    def _prime(self) -> None:
        with self._lock:
            self._last_times = self._cpu_times()
            energy = self._rapl.read_joules() if self._rapl else None
            self._last_energy = (time.monotonic(), energy) if energy is not None else None

    @staticmethod
    def _cpu_times() -> tuple[float, float, float]:
        times = psutil.cpu_times()
        # Linux counts guest time inside user time as well; subtract it as psutil does.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return time.monotonic(), total - idle, total

    def _utilization(self) -> float:
        """Busy share of all CPUs since the previous sample (at least `MIN_UTIL_WINDOW_S`)."""
        with self._lock:
            last = self._last_times
            if last is None or time.monotonic() - last[0] < MIN_UTIL_WINDOW_S:
                if last is None:
                    last = self._cpu_times()
                # Never longer than the window, whatever the clock says.
                time.sleep(min(MIN_UTIL_WINDOW_S, max(0.0, MIN_UTIL_WINDOW_S - (time.monotonic() - last[0]))))
            now = self._cpu_times()
            self._last_times = now
        d_total = now[2] - last[2]
        return min(1.0, max(0.0, (now[1] - last[1]) / d_total)) if d_total > 0 else 0.0

    def sample(self, device: Device) -> Telemetry:
        reasons: dict[str, str] = {}
        utilization = self._utilization()
        vm = psutil.virtual_memory()

        energy = self._rapl.read_joules() if self._rapl else None
        power = None
        if energy is None:
            why = (self._rapl.unavailable_reason if self._rapl else None) or "RAPL not opened"
            reasons["energy_joules"] = why
            reasons["power_watts"] = why
        else:
            now = time.monotonic()
            with self._lock:
                last = self._last_energy
                self._last_energy = (now, energy)
            if last is not None and now > last[0]:
                power = (energy - last[1]) / (now - last[0])
            else:
                reasons["power_watts"] = "power needs two RAPL readings; this was the first"

        temperature = _cpu_temperature()
        if temperature is None:
            reasons["temperature_celsius"] = "no CPU temperature sensor exposed (psutil.sensors_temperatures)"

        return Telemetry(
            device_uid=device.uid,
            utilization=utilization,
            power_watts=power,
            energy_joules=energy,
            memory_used_bytes=vm.total - vm.available,
            temperature_celsius=temperature,
            healthy=True,
            modelled=False,
            reasons=reasons,
        )
