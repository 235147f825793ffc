"""`DeviceProfile`: how fast a device serves a model and on how many watts; measured or modelled.

Placement ranks devices by performance per watt (samples per joule). Where bench has measured
a device (or its chip) serving a model, that measurement is the profile. Otherwise the profile
is modelled from the catalog, with the same roofline the emulated devices use
(`kcloud.runtimes.modelled.roofline`: the larger of the model's FLOPs over the chip's sourced
peak and its weights over the chip's memory bandwidth, both × the chip's own efficiency factor;
the chip's TDP as its power at full load), and it says `modelled=True` everywhere it goes. A
roofline has a knee (memory bound below it, compute bound above), so a modelled latency curve
has points at 1, 2, 4, … rows up to the largest batch, and on both sides of the knee: the
linear interpolation between them (`DeviceProfile.latency_s`) is then exact at whole batches.
A figure that cannot be known (no FLOPs for the model, no peak or TDP in the catalog) stays
`None`; placement then ranks that device as "performance per watt unknown", never as zero.

Measured profiles are JSON files in `<kcloud home>/profiles/` (bench writes them with
`save_measured_profile`), one per (chip or device, model, precision):

    {"chip_key": "cpu-generic", "device_uid": "host/cpu0", "model": "all-minilm-l6-v2",
     "precision": "fp32", "latency_by_batch": [[1, 0.004], [32, 0.05]],
     "power_by_util": [[0.0, 12.0], [1.0, 65.0]], "source": "bench run 2026-11-22T03:00Z ..."}
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kcloud.devices.device import Device
from kcloud.devices.spec import ChipSpec
from kcloud.home import kcloud_home
from kcloud.runtimes.modelled import NotModellable, check_efficiency, roofline

log = logging.getLogger(__name__)

#: Rows of the largest batch a modelled profile covers when the caller knows no batching.
MODELLED_MAX_BATCH = 32
#: Precisions a deployment may constrain to. FP32 has no catalog figure: CPUs and GPUs run it.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "fp8")
FP32_KINDS = ("cpu", "gpu")


def profiles_dir() -> Path:
    return kcloud_home() / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    """latency(batch) and power(utilisation) of one chip or device serving one model.

    `latency_by_batch`: (rows, seconds) points, ascending. `power_by_util`: (utilisation in
    [0, 1], watts) points, ascending. Between points the curves are linear.
    """

    chip_key: str
    model: str | None
    precision: str | None
    latency_by_batch: tuple[tuple[int, float], ...]
    power_by_util: tuple[tuple[float, float], ...]
    modelled: bool
    #: Where the figures come from: a bench run, or the catalog figures and the model used.
    basis: str
    device_uid: str | None = None
    #: Why a figure is unknown (`None` while everything is known).
    unknown_reason: str | None = None
    #: Replicas that ran at once on the device when measured: `latency_by_batch` is one replica's
    #: service time, and the device's throughput is this many replicas' together.
    replicas: int = 1
    #: How much one batch's service time varies: the log-space standard deviation of measured
    #: batch times around `latency_by_batch` (0: not measured, or modelled; taken as exact).
    service_sigma: float = 0.0

    def latency_s(self, batch: int = 1) -> float | None:
        points = self.latency_by_batch
        if not points:
            return None
        if batch <= points[0][0]:
            return points[0][1] * batch / points[0][0]
        for (b0, t0), (b1, t1) in itertools.pairwise(points):
            if batch <= b1:
                return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        b_last, t_last = points[-1]
        return t_last * batch / b_last  # beyond the last point: its per-row time

    @property
    def samples_per_second(self) -> float | None:
        """The device's best throughput: the latency curve's best, times the replicas it runs."""
        rates = [b / t for b, t in self.latency_by_batch if t > 0]
        return max(rates) * self.replicas if rates else None

    def power_w(self, utilization: float) -> float | None:
        """Power at this utilisation; `None` outside the measured (or sourced) points."""
        points = self.power_by_util
        if not points:
            return None
        for (u0, w0), (u1, w1) in itertools.pairwise(points):
            if u0 <= utilization <= u1:
                return w0 + (w1 - w0) * (utilization - u0) / (u1 - u0) if u1 > u0 else w1
        for u, w in points:
            if abs(u - utilization) < 1e-9:
                return w
        return None

    @property
    def busy_watts(self) -> float | None:
        """Power at the highest utilisation known (the TDP for a modelled profile)."""
        return self.power_by_util[-1][1] if self.power_by_util else None

    @property
    def perf_per_watt(self) -> float | None:
        """Samples per joule at full load; `None` when either side is unknown."""
        sps, watts = self.samples_per_second, self.busy_watts
        if sps is None or watts is None or watts <= 0:
            return None
        return sps / watts


def modelled_profile(
    spec: ChipSpec,
    model: str | None,
    flops_per_sample: float | None,
    precision: str | None = None,
    *,
    max_batch: int | None = None,
    efficiency: float | None = None,
    weight_bytes: int | None = None,
) -> DeviceProfile:
    """A profile from catalog figures alone, marked modelled; unknown parts stay empty.

    `max_batch`: the model's largest batch, where the latency curve ends (`None`: 32).
    `weight_bytes`: the model's FP32 weight bytes (`ModelConfig.memory_bytes`), `None` for the
    compute term alone. `efficiency`: `None` for the chip's own factor, else a what-if.
    """
    check_efficiency(efficiency)
    reasons = []
    latency: tuple[tuple[int, float], ...] = ()
    basis = []
    if flops_per_sample is None or flops_per_sample <= 0:
        reasons.append("the model config has no flops_per_sample")
    else:
        try:
            line = roofline(spec, flops_per_sample, weight_bytes=weight_bytes, precision=precision,
                            efficiency=efficiency)
        except NotModellable as exc:
            reasons.append(str(exc))
        else:
            largest = max(1, MODELLED_MAX_BATCH if max_batch is None else max_batch)
            latency = tuple((b, line.seconds(b)) for b in _batch_points(largest, line.knee_rows))
            bounds = _bounds(line.knee_rows, largest)
            basis.append(f"{line.basis}, {flops_per_sample:.3g} FLOPs/sample; {bounds}")
    power: tuple[tuple[float, float], ...] = ()
    if spec.tdp_watts.known and spec.tdp_watts.value > 0:
        power = ((1.0, float(spec.tdp_watts.value)),)
        basis.append(f"TDP {spec.tdp_watts.value:g} W at full load")
    else:
        reasons.append(f"catalog entry {spec.key} has no TDP")
    return DeviceProfile(
        chip_key=spec.key,
        model=model,
        precision=precision,
        latency_by_batch=latency,
        power_by_util=power,
        modelled=True,
        basis="modelled from the catalog: " + ("; ".join(basis) or "no figures"),
        unknown_reason="; ".join(reasons) or None,
    )


def _batch_points(largest: int, knee: float | None) -> list[int]:
    """1, 2, 4, … up to `largest`, and the whole batches either side of the roofline's knee."""
    points = {1, largest} | {1 << k for k in range(largest.bit_length()) if 1 << k <= largest}
    if knee is not None and 1 < knee < largest:
        points |= {math.floor(knee), math.ceil(knee)}
    return sorted(points)


def _bounds(knee: float | None, largest: int) -> str:
    if knee is None or knee <= 1:
        return "compute bound at every batch"
    if knee >= largest:
        return f"memory bound at every batch up to {largest}"
    return f"memory bound below {knee:.3g} rows, compute bound above"


class MeasuredProfileFile(BaseModel):
    """The JSON a bench run leaves in the profiles directory."""

    model_config = ConfigDict(extra="forbid")

    chip_key: str = Field(min_length=1)
    device_uid: str | None = None
    model: str = Field(min_length=1)
    precision: str | None = None
    latency_by_batch: list[tuple[int, float]] = Field(min_length=1)
    power_by_util: list[tuple[float, float]] = Field(default_factory=list)
    source: str = Field(min_length=1)
    #: Replicas running at once on the device (each with the service times above).
    replicas: int = Field(default=1, ge=1)
    #: Log-space standard deviation of a batch's measured time around `latency_by_batch`.
    service_sigma: float = Field(default=0.0, ge=0, le=3)

    @field_validator("latency_by_batch")
    @classmethod
    def _positive(cls, points: list[tuple[int, float]]) -> list[tuple[int, float]]:
        if any(b < 1 or t <= 0 for b, t in points):
            raise ValueError("latency points need rows >= 1 and seconds > 0")
        return sorted(points)

    @field_validator("power_by_util")
    @classmethod
    def _utilisation(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(not 0 <= u <= 1 or w < 0 for u, w in points):
            raise ValueError("power points need utilisation in [0, 1] and watts >= 0")
        return sorted(points)

    def profile(self) -> DeviceProfile:
        return DeviceProfile(
            chip_key=self.chip_key,
            model=self.model,
            precision=self.precision,
            latency_by_batch=tuple(self.latency_by_batch),
            power_by_util=tuple(self.power_by_util),
            modelled=False,
            basis=f"measured: {self.source}",
            device_uid=self.device_uid,
            unknown_reason=None if self.power_by_util else "the bench run measured no power",
            replicas=self.replicas,
            service_sigma=self.service_sigma,
        )


def measured_profile_path(
    device_or_chip: str, model: str, precision: str | None, directory: Path | None = None
) -> Path:
    """Where the measured profile of (device or chip, model, precision) is kept."""
    stem = "_".join(part.replace("/", "-") for part in (device_or_chip, model, precision or "any"))
    return (directory or profiles_dir()) / f"{stem}.json"


def save_measured_profile(profile: MeasuredProfileFile, directory: Path | None = None) -> Path:
    """Write one measured profile atomically (for bench); returns its path."""
    target = measured_profile_path(profile.device_uid or profile.chip_key, profile.model, profile.precision,
                                   directory)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(profile.model_dump_json(indent=2))
    os.replace(tmp, target)
    return target


class ProfileBook:
    """Measured profiles by (device or chip, model, precision), with modelled ones as fallback."""

    def __init__(self, measured: Iterable[DeviceProfile] = ()) -> None:
        self._by_device: dict[tuple[str, str | None, str | None], DeviceProfile] = {}
        self._by_chip: dict[tuple[str, str | None, str | None], DeviceProfile] = {}
        for profile in measured:
            key = (profile.model, profile.precision)
            if profile.device_uid:
                self._by_device[(profile.device_uid, *key)] = profile
            self._by_chip.setdefault((profile.chip_key, *key), profile)

    @classmethod
    def load(cls, directory: Path | None = None) -> ProfileBook:
        """Every readable profile file; a broken one is skipped with a warning naming it."""
        directory = directory or profiles_dir()
        found = []
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                try:
                    found.append(
                        MeasuredProfileFile.model_validate(json.loads(path.read_text("utf-8"))).profile()
                    )
                except ValidationError as exc:  # name the fields: its first line only counts them
                    wrong = "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
                    )
                    log.warning("ignoring measured profile %s: %s", path, wrong)
                except (OSError, ValueError) as exc:
                    log.warning("ignoring measured profile %s: %s", path, str(exc).splitlines()[0])
        return cls(found)

    @property
    def measured(self) -> list[DeviceProfile]:
        return list({id(p): p for p in (*self._by_device.values(), *self._by_chip.values())}.values())

    def for_device(
        self,
        device: Device,
        model: str | None,
        flops_per_sample: float | None,
        precision: str | None = None,
        *,
        weight_bytes: int | None = None,
        max_batch: int | None = None,
    ) -> DeviceProfile:
        """The device's own measurement, else its chip's, else the catalog model (for which
        `weight_bytes` and `max_batch` are the model's FP32 weights and largest batch)."""
        for precision_key in (precision, None) if precision else (None,):
            hit = self._by_device.get((device.uid, model, precision_key)) or self._by_chip.get(
                (device.spec.key, model, precision_key)
            )
            if hit is not None:
                return hit
        return modelled_profile(device.spec, model, flops_per_sample, precision, weight_bytes=weight_bytes,
                                max_batch=max_batch)
