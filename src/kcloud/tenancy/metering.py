"""Usage metering in memory: counters per (day, tenant, key, deployment), and energy attribution.

The gateway calls `UsageMeter.record` once per request, on the event loop: a dict update under an
uncontended lock, no I/O. A background thread (`kcloud.tenancy.service.Tenancy`) calls
`take_interval` every `DEFAULT_USAGE_FLUSH_S` (100 ms), which swaps the counters out, then adds
them to the database in one transaction, so a crash loses at most the requests of the last
interval and of the write in progress. Energy is attributed every `ENERGY_INTERVAL_S` only
(`take_interval(attribute_energy=True)`): it reads every device's energy counter, a driver call
each, which is not worth doing ten times a second; device time accumulates in between.

**Tokens.** An LLM generation's prompt and completion tokens, put on the request's context by
`kcloud.tenancy.tokens.TokenLimiter.charge` when it ends, are added up per bucket like samples.

**Device-seconds.** A batch computes for `compute_s` on one device for `batch_rows` rows; a request
owning `rows` of them is charged `compute_s * rows / batch_rows` device-seconds on that device.

**Energy.** Each device's cumulative energy counter is read at every interval's end. The energy the
device used during the interval, `dE`, is split between the buckets that used it by their share
of the device's time: a bucket with `d` device-seconds on it gets `dE * d / max(wall, busy)`,
where `wall` is the interval's length and `busy` the device-seconds charged on it in total. A fully
busy device hands out all of its energy; a device idle half the interval hands out half, and the
idle half is the operator's, not billed to whoever happened to use the device. Devices whose
energy is modelled (emulated ones) add to `energy_joules_modelled`, measured ones to
`energy_joules`; a device without a counter adds to neither, so a bucket that only used such
devices keeps `None` (unknown), never 0. The first interval after a device is first seen has no
earlier reading, so its energy is not attributed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

log = logging.getLogger(__name__)

#: How often device energy is attributed to the buckets that used the devices.
ENERGY_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """The grain usage is kept at. Names ride along so history stays readable after deletions."""

    day: date
    tenant_id: int | None
    key_id: int | None
    deployment: str | None
    tenant_name: str | None = field(default=None, compare=False, hash=False)
    key_prefix: str | None = field(default=None, compare=False, hash=False)


@dataclass(slots=True)
class UsageCounts:
    requests: int = 0
    samples: int = 0
    errors: int = 0
    device_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    energy_joules: float | None = None
    energy_joules_modelled: float | None = None

    def add_energy(self, joules: float, *, modelled: bool) -> None:
        if modelled:
            self.energy_joules_modelled = (self.energy_joules_modelled or 0.0) + joules
        else:
            self.energy_joules = (self.energy_joules or 0.0) + joules


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """One read of a device's cumulative energy counter (`joules` None: the device has none)."""

    joules: float | None
    modelled: bool
    at: float = field(default_factory=time.monotonic)


EnergyReader = Callable[[str], EnergyReading]


_DAY_S = 86_400
_day_cache: tuple[int, date] = (-1, date.min)


def utc_day(at: float | None = None) -> date:
    """The UTC date of `at` (now by default); cached per day, as every request asks for it."""
    global _day_cache
    now = time.time() if at is None else at
    number = int(now // _DAY_S)
    cached_number, cached_day = _day_cache
    if number == cached_number:
        return cached_day
    day = datetime.fromtimestamp(now, UTC).date()
    _day_cache = (number, day)
    return day


class UsageMeter:
    """Counters for the current interval, and the last energy reading of every device seen."""

    def __init__(self, read_energy: EnergyReader | None = None) -> None:
        self._read_energy = read_energy
        self._lock = threading.Lock()
        self._counts: dict[UsageBucket, UsageCounts] = {}
        self._device_time: dict[str, dict[UsageBucket, float]] = {}
        self._last: dict[str, EnergyReading] = {}

    def record(
        self,
        bucket: UsageBucket,
        *,
        samples: int = 0,
        error: bool = False,
        device_seconds: dict[str, float] | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one request (O(1), no I/O)."""
        with self._lock:
            counts = self._counts.get(bucket)
            if counts is None:
                counts = self._counts[bucket] = UsageCounts()
            counts.requests += 1
            counts.samples += samples
            counts.prompt_tokens += prompt_tokens
            counts.completion_tokens += completion_tokens
            if error:
                counts.errors += 1
            if device_seconds:
                for uid, seconds in device_seconds.items():
                    counts.device_seconds += seconds
                    per_bucket = self._device_time.get(uid)
                    if per_bucket is None:
                        per_bucket = self._device_time[uid] = defaultdict(float)
                    per_bucket[bucket] += seconds

    def prime(self, device_uids: Iterable[str]) -> None:
        """Read the counters of devices now, so the first interval's energy can be attributed."""
        if self._read_energy is None:
            return
        for uid in device_uids:
            reading = self._safe_read(uid)
            if reading is not None and reading.joules is not None:
                self._last[uid] = reading

    def pending(self) -> bool:
        with self._lock:
            return bool(self._counts)

    def take_interval(self, *, attribute_energy: bool = True) -> dict[UsageBucket, UsageCounts]:
        """Swap out this interval's counters; with `attribute_energy`, also the device time since the
        last attribution, with its energy attributed (a bucket with no requests since the last take
        then gets an entry of energy alone). Call off the event loop: attributing reads device
        counters, which may take a driver call each."""
        with self._lock:
            counts, self._counts = self._counts, {}
            take_time = attribute_energy or self._read_energy is None
            device_time: dict[str, dict[UsageBucket, float]] = {}
            if take_time:
                device_time, self._device_time = self._device_time, {}
        if take_time and self._read_energy is not None:
            self._attribute_energy(counts, device_time)
        return counts

    def restore(self, counts: dict[UsageBucket, UsageCounts]) -> None:
        """Put back an interval that could not be written, so a database outage loses nothing."""
        with self._lock:
            for bucket, old in counts.items():
                current = self._counts.get(bucket)
                if current is None:
                    self._counts[bucket] = old
                    continue
                current.requests += old.requests
                current.samples += old.samples
                current.errors += old.errors
                current.device_seconds += old.device_seconds
                current.prompt_tokens += old.prompt_tokens
                current.completion_tokens += old.completion_tokens
                if old.energy_joules is not None:
                    current.add_energy(old.energy_joules, modelled=False)
                if old.energy_joules_modelled is not None:
                    current.add_energy(old.energy_joules_modelled, modelled=True)

    def _attribute_energy(
        self, counts: dict[UsageBucket, UsageCounts], device_time: dict[str, dict[UsageBucket, float]]
    ) -> None:
        for uid in sorted(set(self._last) | set(device_time)):
            reading = self._safe_read(uid)
            if reading is None or reading.joules is None:
                continue
            previous = self._last.get(uid)
            self._last[uid] = reading
            used = device_time.get(uid)
            if previous is None or not used:
                continue
            delta = reading.joules - previous.joules  # type: ignore[operator]
            if delta < 0:
                log.warning("energy counter of %s went backwards (%.3f J); interval not attributed",
                            uid, delta)
                continue
            wall = reading.at - previous.at
            busy = sum(used.values())
            denominator = max(wall, busy)
            if denominator <= 0:
                continue
            for bucket, seconds in used.items():
                counts_of = counts.get(bucket)
                if counts_of is None:  # its requests were taken in an earlier interval
                    counts_of = counts[bucket] = UsageCounts()
                counts_of.add_energy(delta * seconds / denominator, modelled=reading.modelled)

    def _safe_read(self, uid: str) -> EnergyReading | None:
        assert self._read_energy is not None
        try:
            return self._read_energy(uid)
        except Exception as exc:  # a flaky sensor must not stop metering
            log.warning("could not read the energy counter of %s: %s", uid, exc)
            return None
