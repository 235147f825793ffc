"""Capacity accounting: what a set of devices can compute and draw, with unknowns kept unknown.

A device whose catalog row has no figure is never counted as zero. Each total carries the sum
over the devices whose figure is known, how many devices are unknown, and which: the honest
reading of a total is "at least X, and N devices unknown".

Figures per device, from its `ChipSpec` (dense, per card):
- `fp16_bf16_pflops`: FP16 TFLOPS, or BF16 where only BF16 is published, / 1000;
- `int8_pops`: INT8 TOPS / 1000;
- `tdp_watts`: maximum board power, summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from kcloud.devices.device import Device
from kcloud.devices.spec import ChipSpec

#: The group of devices whose node names no sector or cloud.
UNSPECIFIED = "unspecified"

FigureName = Literal["fp16_bf16_pflops", "int8_pops", "tdp_watts"]


def _half_precision_pflops(spec: ChipSpec) -> float | None:
    value = spec.fp16_tflops.value if spec.fp16_tflops.known else spec.bf16_tflops.value
    return None if value is None else value / 1000


def _int8_pops(spec: ChipSpec) -> float | None:
    return None if spec.int8_tops.value is None else spec.int8_tops.value / 1000


FIGURES: dict[FigureName, tuple[str, str, Callable[[ChipSpec], float | None]]] = {
    "fp16_bf16_pflops": ("FP16/BF16", "PFLOPS", _half_precision_pflops),
    "int8_pops": ("INT8", "POPS", _int8_pops),
    "tdp_watts": ("TDP", "W", lambda spec: spec.tdp_watts.value),
}


class Total(BaseModel):
    """One figure summed over a group of devices."""

    unit: str
    known: float | None = None  # sum over devices whose figure is known; None if there are none
    known_devices: int = 0
    unknown_devices: int = 0

    def add(self, value: float | None) -> None:
        if value is None:
            self.unknown_devices += 1
        else:
            self.known = round((self.known or 0.0) + value, 9)
            self.known_devices += 1

    @property
    def complete(self) -> bool:
        return self.unknown_devices == 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def text(self) -> str:
        return self.display()

    def display(self, digits: int = 3, unit: bool = True) -> str:
        """`"1.23 PFLOPS"`, `"≥ 1.23 PFLOPS (4 devices unknown)"`, or `"unknown (4 devices)"`."""
        n = self.unknown_devices
        devices = f"{n} device{'s' * (n != 1)}"
        if self.known is None:
            return f"unknown ({devices})"
        number = f"{self.known:,.{digits}f}".rstrip("0").rstrip(".")
        number = f"{number} {self.unit}" if unit else number
        return number if self.complete else f"≥ {number} ({devices} unknown)"


def _totals() -> dict[FigureName, Total]:
    return {name: Total(unit=unit) for name, (_, unit, _) in FIGURES.items()}


class Group(BaseModel):
    """Totals for the devices sharing one vendor, chip, node, sector, cloud or origin."""

    devices: int = 0
    emulated: int = 0
    totals: dict[FigureName, Total] = Field(default_factory=_totals)


class UnknownDevice(BaseModel):
    uid: str
    chip: str
    note: str | None = None


class CapacityReport(BaseModel):
    """Farm totals, broken down by vendor, chip, node, sector, cloud and origin.

    `model_dump(mode="json")` for JSON."""

    devices: int = 0
    emulated: int = 0
    totals: dict[FigureName, Total] = Field(default_factory=_totals)
    by_vendor: dict[str, Group] = Field(default_factory=dict)
    by_chip: dict[str, Group] = Field(default_factory=dict)
    by_node: dict[str, Group] = Field(default_factory=dict)
    #: By the node's sector and cloud (farm files' `sector`, `cloud`; `unspecified` where none is given).
    by_sector: dict[str, Group] = Field(default_factory=dict)
    by_cloud: dict[str, Group] = Field(default_factory=dict)
    #: Real devices against emulated ones (`real`, `emulated`).
    by_origin: dict[str, Group] = Field(default_factory=dict)
    #: For each figure, the devices counted as unknown and why (the catalog's note).
    unknown: dict[FigureName, list[UnknownDevice]] = Field(
        default_factory=lambda: {name: [] for name in FIGURES}
    )


def _note(spec: ChipSpec, figure: FigureName) -> str | None:
    if figure == "fp16_bf16_pflops":
        return spec.fp16_tflops.note or spec.bf16_tflops.note
    if figure == "int8_pops":
        return spec.int8_tops.note
    return spec.tdp_watts.note


def capacity_report(devices: Iterable[Device]) -> CapacityReport:
    """Sum every figure over `devices`, by vendor, chip and node; unknowns counted and listed."""
    report = CapacityReport()
    for device in devices:
        groups = [
            report.by_vendor.setdefault(device.vendor, Group()),
            report.by_chip.setdefault(device.spec.key, Group()),
            report.by_node.setdefault(device.node, Group()),
            report.by_sector.setdefault(device.attributes.get("sector") or UNSPECIFIED, Group()),
            report.by_cloud.setdefault(device.attributes.get("cloud") or UNSPECIFIED, Group()),
            report.by_origin.setdefault("emulated" if device.emulated else "real", Group()),
        ]
        for holder in (report, *groups):
            holder.devices += 1
            holder.emulated += int(device.emulated)
        for figure, (_, _, value_of) in FIGURES.items():
            value = value_of(device.spec)
            for holder in (report, *groups):
                holder.totals[figure].add(value)
            if value is None:
                report.unknown[figure].append(
                    UnknownDevice(uid=device.uid, chip=device.spec.key, note=_note(device.spec, figure))
                )
    return report
