"""Energy over LoadGen's run window, from the devices' cumulative energy counters.

Counters (RAPL, NVML's total-energy counter, the emulated devices' modelled counter) are read
through the inventory before LoadGen starts, every `interval_s` while it runs (so that a plugin
that unwraps a wrapping counter sees every wrap) and after it returns. The energy of the window
LoadGen reports (`power_begin`..`power_end` in its detail log, the window MLPerf Power meters) is
the counter's difference between those instants, each read by linear interpolation between the
two nearest readings. Power samples are never summed: the counter is the measurement.

Nothing is ever guessed: no counter, an unreadable one, or one that went backwards gives
`None` with the reason.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kcloud.devices.device import Telemetry

log = logging.getLogger(__name__)

#: Reads every metered device once: `uid -> Telemetry` (a uid left out has no reading).
ReadAll = Callable[[], dict[str, Telemetry]]


@dataclass
class DeviceEnergy:
    """Energy one device used in a window; `joules is None` comes with `reason`."""

    uid: str
    joules: float | None
    modelled: bool
    reason: str | None = None
    readings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "joules": self.joules,
            "modelled": self.modelled,
            "reason": self.reason,
            "readings": self.readings,
        }


@dataclass
class _Series:
    uid: str
    times: list[float] = field(default_factory=list)
    joules: list[float] = field(default_factory=list)
    modelled: bool = False
    reason: str | None = None


class EnergyMeter:
    """Reads every device's energy counter periodically in a background thread."""

    def __init__(self, uids: list[str], read_all: ReadAll, *, interval_s: float = 0.5) -> None:
        self._series = [_Series(uid) for uid in uids]
        self._read = read_all
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_devices(
        cls, readers: dict[str, Callable[[], Telemetry]], *, interval_s: float = 0.5
    ) -> EnergyMeter:
        """One reader per device (the local inventory's `sample`)."""
        return cls(
            list(readers), lambda: {uid: read() for uid, read in readers.items()}, interval_s=interval_s
        )

    def _read_all(self) -> None:
        try:
            readings = self._read()
        except Exception as exc:  # a flaky sensor must not break the benchmark
            for series in self._series:
                series.reason = series.reason or f"reading the energy counters failed: {exc}"
            return
        for series in self._series:
            if series.reason is not None:
                continue
            reading = readings.get(series.uid)
            if reading is None:
                series.reason = "no energy reading for this device"
                continue
            now = reading.timestamp or time.time()
            series.modelled = series.modelled or reading.modelled
            if reading.energy_joules is None:
                series.reason = (
                    reading.reasons.get("energy_joules")
                    or reading.reasons.get("telemetry")
                    or "device reports no energy counter"
                )
                continue
            if series.joules and reading.energy_joules < series.joules[-1]:
                series.reason = (
                    "energy counter went backwards between two readings "
                    "(counter reset, or a wrap the plugin did not see)"
                )
                continue
            if series.times and now <= series.times[-1]:
                continue
            series.times.append(now)
            series.joules.append(float(reading.energy_joules))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._read_all()

    def start(self) -> None:
        self._read_all()
        self._thread = threading.Thread(target=self._loop, name="kcloud-bench-energy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._read_all()

    @property
    def span(self) -> tuple[float, float] | None:
        """First and last reading time common to all devices with readings."""
        spans = [(s.times[0], s.times[-1]) for s in self._series if len(s.times) >= 2]
        if not spans:
            return None
        return max(a for a, _ in spans), min(b for _, b in spans)

    def energy(self, t0: float, t1: float) -> list[DeviceEnergy]:
        """Each device's energy between epoch times `t0` and `t1`."""
        return [self._device_energy(s, t0, t1) for s in self._series]

    @staticmethod
    def _device_energy(series: _Series, t0: float, t1: float) -> DeviceEnergy:
        if series.reason is not None:
            return DeviceEnergy(series.uid, None, series.modelled, series.reason, len(series.times))
        times, joules = series.times, series.joules
        if len(times) < 2:
            return DeviceEnergy(
                series.uid, None, series.modelled, "fewer than two counter readings", len(times)
            )
        # a window edge up to one interval outside the readings is clamped (the window and the
        # readings both start around LoadGen's start); beyond that it is not covered
        slack = 1.0
        if t0 < times[0] - slack or t1 > times[-1] + slack:
            return DeviceEnergy(
                series.uid,
                None,
                series.modelled,
                "the counter readings do not cover LoadGen's run window",
                len(times),
            )
        used = _interpolate(times, joules, t1) - _interpolate(times, joules, t0)
        return DeviceEnergy(series.uid, max(used, 0.0), series.modelled, None, len(times))


def _interpolate(times: list[float], values: list[float], t: float) -> float:
    if t <= times[0]:
        return values[0]
    if t >= times[-1]:
        return values[-1]
    i = bisect.bisect_right(times, t)
    ta, tb, va, vb = times[i - 1], times[i], values[i - 1], values[i]
    return va + (vb - va) * (t - ta) / (tb - ta)


def efficiency(
    scenario: str, joules: float | None, *, samples: int | None, queries: int | None
) -> dict[str, Any]:
    """MLPerf Power's figures: samples per joule (Offline, Server), mJ per query (SingleStream,
    MultiStream). `samples`/`queries` are those completed inside the same window."""
    if scenario in ("Offline", "Server"):
        value = samples / joules if joules and samples is not None else None
        return {"name": "samples_per_joule", "unit": "samples/J", "value": value}
    value = joules * 1000.0 / queries if joules is not None and queries else None
    return {"name": "millijoules_per_query", "unit": "mJ/query", "value": value}


def token_efficiency(joules: float | None, tokens: int | None) -> dict[str, Any]:
    """Energy per generated token (chat models), over the same window as the samples' figure."""
    value = joules / tokens if joules is not None and tokens else None
    return {"name": "joules_per_token", "unit": "J/token", "value": value}
