"""`ChipSpec`: one row of the chip catalog, every figure with its source.

A figure that nobody published stays `None`. Capacity sums and placement treat `None` as
*unknown*, never as zero, so an unsourced number can never leak into a total.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Confidence = Literal["vendor", "third-party"]
DeviceKind = Literal["npu", "gpu", "cpu", "pim"]


class Figure(BaseModel):
    """One published number, with where it came from and how far to trust it."""

    model_config = ConfigDict(frozen=True)

    value: float | None = None
    source: str | None = None
    confidence: Confidence | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _sourced(self) -> Figure:
        if self.value is not None and (not self.source or self.confidence is None):
            raise ValueError(f"figure {self.value} has no source or confidence")
        return self

    @property
    def known(self) -> bool:
        return self.value is not None


UNKNOWN = Figure()


class ChipSpec(BaseModel):
    """A chip (or a card built on it) as the catalog describes it.

    `key` is the catalog id used in farm files and APIs (e.g. `rebellions-atom-ca22`).
    Units are fixed by the field names: TOPS and TFLOPS are dense, per card.
    `mlperf_resnet50_offline_sps` is a measurement, not a peak: the samples/s of the chip's
    MLPerf Inference closed-division ResNet-50 Offline result. It is what the emulated devices'
    efficiency factor comes from (`kcloud.runtimes.modelled.chip_efficiency`): a fraction of
    peak that a real network reached, rather than a guess.
    """

    model_config = ConfigDict(frozen=True)

    key: str
    vendor: str
    chip: str
    card: str | None = None
    kind: DeviceKind
    int8_tops: Figure = UNKNOWN
    fp16_tflops: Figure = UNKNOWN
    bf16_tflops: Figure = UNKNOWN
    fp8_tflops: Figure = UNKNOWN
    memory_gib: Figure = UNKNOWN
    memory_bandwidth_gbps: Figure = UNKNOWN
    tdp_watts: Figure = UNKNOWN
    mlperf_resnet50_offline_sps: Figure = UNKNOWN
    host_link: str | None = None
    host_link_source: str | None = None
    notes: str | None = None
