"""Modelled device time for emulated devices: what the catalog chip would have taken.

An emulated device computes on the host, so its measured time says nothing about the chip it
stands for. Next to the real time we record a *modelled* one, a roofline from the chip's
sourced peak compute and memory bandwidth:

    compute_s  = flops_per_sample × rows / (peak_flops × efficiency)
    memory_s   = weight_bytes / (memory_bandwidth × efficiency)     (weights read once per batch)
    modelled_s = max(compute_s, memory_s)

- `peak_flops` is the catalog figure of the precision asked for. Without one (the emulated
  devices ask for none) it is the dense FP16 (or BF16) TFLOPS: the models we serve are float
  graphs, and a float figure is what a float graph would run at. Without a float figure the
  INT8 TOPS stand in (the chip would serve a quantised model), and the basis says so.
- `weight_bytes` is the model's `ModelConfig.memory_bytes`: the FP32 weights of its ONNX graph.
  They are read at the width of the precision the compute side runs at: ÷2 for FP16/BF16, ÷4 for
  INT8/FP8, as they are for FP32. A small batch is then memory bound (the weights cost the same
  whatever the rows), a large one compute bound; the knee is where the two times meet. Where the
  chip's bandwidth or the model's weight bytes are unknown only the compute term is modelled, and
  the basis says so. On-chip SRAM that could hold a small model's weights is not modelled: the
  catalog has no such figure per chip, so small models are modelled as re-reading DRAM.
- `efficiency` is the fraction of peak a chip reaches on a real network, *per chip*
  (`chip_efficiency`): from its own measured MLPerf Inference result in the catalog (closed
  division, ResNet-50 Offline, 8.2 G operations per image = 2 × 4.1 GMAC) over its INT8 TOPS:
  Rebellions ATOM 7,245.87 samples/s × 8.2 G / 128 INT8 TOPS = 0.46;
  FuriosaAI Warboy 2,758.44 samples/s × 8.2 G / 64 INT8 TOPS = 0.35.
  A chip without both figures gets `DEFAULT_EFFICIENCY` 0.4, the mean of those two (0.41), and
  its basis says it is the default and why. The same factor scales the bandwidth: the MLPerf
  results measure the whole chip, not its arithmetic alone. It is a model parameter, not a
  measurement of this chip on this model; an explicit `efficiency` is a "what if" for every chip.

Anything unknown (the model's FLOPs, the chip's peak) gives `seconds=None` with the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kcloud.devices.spec import ChipSpec, Figure

#: Fraction of the sourced peak a chip without an MLPerf result reaches (see the module docstring).
DEFAULT_EFFICIENCY = 0.4
#: ResNet-50 v1.5 operations per 224×224 image (2 × 4.1 GMAC), for the derivation above.
RESNET50_OPS_PER_SAMPLE = 8.2e9

#: Catalog figure that gives a chip's peak for each precision a deployment can ask for.
PRECISION_FIGURES: dict[str, str] = {
    "fp16": "fp16_tflops",
    "bf16": "bf16_tflops",
    "int8": "int8_tops",
    "fp8": "fp8_tflops",
}
#: Bytes of one weight at each precision. `ModelConfig.memory_bytes` counts FP32 weights (4 bytes).
BYTES_PER_WEIGHT: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}
_STORED_BYTES_PER_WEIGHT = 4
#: The precision each default peak figure is for (what the weights are read at without a precision).
_FIGURE_PRECISION = {"fp16_tflops": "fp16", "bf16_tflops": "bf16", "int8_tops": "int8"}


@dataclass(frozen=True)
class ModelledTime:
    """A modelled device time (never a measurement); `seconds` is `None` when it cannot be modelled."""

    seconds: float | None
    basis: str | None = None  # e.g. "fp16_tflops=32 × efficiency 0.46 (MLPerf v3.0 ...); ... compute bound"
    reason: str | None = None  # why `seconds` is None
    modelled: bool = True
    #: Which roofline term set the time: "compute" or "memory" (`None` when `seconds` is None).
    bound: str | None = None


class NotModellable(Exception):
    """A figure the roofline needs is unknown; the message says which (a reason, not a bug)."""


def check_efficiency(efficiency: float | None) -> None:
    """A what-if efficiency must be a fraction of peak; `None` (the chip's own) always passes."""
    if efficiency is not None and not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")


def chip_efficiency(spec: ChipSpec) -> tuple[float, str]:
    """The chip's own fraction of peak, and its basis: from its MLPerf ResNet-50 Offline result
    and INT8 TOPS where the catalog has both, else `DEFAULT_EFFICIENCY`, labelled as the default."""
    sps, tops = spec.mlperf_resnet50_offline_sps, spec.int8_tops
    if sps.known and tops.known and tops.value > 0:
        value = sps.value * RESNET50_OPS_PER_SAMPLE / (tops.value * 1e12)
        derivation = (f"{_mlperf_round(sps)} ResNet-50 Offline {sps.value:,g} samples/s × 8.2 G / "
                      f"{tops.value:g} INT8 TOPS = {value:.2f}")
        if 0 < value <= 1:
            return value, derivation
        why = f"{derivation} is not a fraction of peak"
    elif sps.known:
        why = f"{spec.key} has an MLPerf ResNet-50 result but no INT8 TOPS to divide it by"
    else:
        why = f"no MLPerf ResNet-50 result for {spec.key} in the catalog"
    mean = "about the mean of the MLPerf-derived factors"
    return DEFAULT_EFFICIENCY, f"default {DEFAULT_EFFICIENCY:g}: {why}; {mean}"


def efficiency_for(spec: ChipSpec, efficiency: float | None = None) -> tuple[float, str]:
    """The factor `spec` is modelled with, and its basis: the caller's what-if, else the chip's own."""
    check_efficiency(efficiency)
    if efficiency is None:
        return chip_efficiency(spec)
    return efficiency, f"{efficiency:g} given as a what-if for every chip"


def _two(value: float) -> str:
    """A factor as the basis shows it: two decimals at most (0.46, 0.4)."""
    return f"{round(value, 2):g}"


def _mlperf_round(figure: Figure) -> str:
    """'MLPerf v3.0' from the figure's source (its results repository), else plain 'MLPerf'."""
    found = re.search(r"inference_results_(v\d+(?:\.\d+)*)", figure.source or "")
    return f"MLPerf {found.group(1)}" if found else "MLPerf"


def _peak(spec: ChipSpec, precision: str | None) -> tuple[float, str, str] | None:
    """(ops/s, which figure, the precision the weights are read at), or `None` when unknown."""
    if precision is not None and precision != "fp32":
        figure = getattr(spec, PRECISION_FIGURES[precision])
        if figure.known and figure.value > 0:
            return figure.value * 1e12, f"{PRECISION_FIGURES[precision]}={figure.value:g}", precision
        return None
    for field_name in ("fp16_tflops", "bf16_tflops", "int8_tops"):
        figure = getattr(spec, field_name)
        if figure.known and figure.value > 0:
            text = f"{field_name}={figure.value:g}"
            if field_name == "int8_tops":
                text += " (no float figure)"
            return figure.value * 1e12, text, precision or _FIGURE_PRECISION[field_name]
    return None


def peak_ops_per_second(spec: ChipSpec) -> tuple[float, str] | None:
    """The chip's dense peak in operations/s and which catalog figure it came from."""
    return peak_for_precision(spec, None)


def peak_for_precision(spec: ChipSpec, precision: str | None) -> tuple[float, str] | None:
    """The chip's peak (ops/s) for a precision, and which figure it is; `None` when unknown.

    Without a precision (or FP32, which has no catalog figure) this is the figure the emulated
    devices use: FP16, then BF16, then INT8.
    """
    found = _peak(spec, precision)
    return None if found is None else found[:2]


@dataclass(frozen=True)
class Roofline:
    """One model on one catalog chip: the two times a batch cannot beat, both modelled."""

    compute_s_per_row: float
    #: Reading the weights once; `None` when the bandwidth or the weights' size is unknown.
    memory_s_per_batch: float | None
    efficiency: float
    #: The figures and the efficiency, each with where it came from.
    basis: str

    def seconds(self, rows: int) -> float:
        """Modelled time of one batch of `rows` (no batch, no time)."""
        if rows <= 0:
            return 0.0
        return max(self.compute_s_per_row * rows, self.memory_s_per_batch or 0.0)

    def bound(self, rows: int) -> str:
        """"memory" when reading the weights takes longer than computing `rows`, else "compute"."""
        memory = self.memory_s_per_batch or 0.0
        return "memory" if memory > self.compute_s_per_row * rows else "compute"

    @property
    def knee_rows(self) -> float | None:
        """The batch at which compute time reaches memory time (memory bound below it)."""
        if not self.memory_s_per_batch:
            return None
        if self.compute_s_per_row <= 0:
            return math.inf
        return self.memory_s_per_batch / self.compute_s_per_row


def roofline(
    spec: ChipSpec,
    flops_per_sample: float,
    *,
    weight_bytes: int | None = None,
    precision: str | None = None,
    efficiency: float | None = None,
) -> Roofline:
    """The roofline of a model (`flops_per_sample`, FP32 `weight_bytes`) on `spec` at `precision`.

    `NotModellable` (with the reason) when the chip has no peak figure for it.
    """
    factor, factor_basis = efficiency_for(spec, efficiency)
    peak = _peak(spec, precision)
    if peak is None:
        what = (f"{precision.upper()} figure" if precision and precision != "fp32"
                else "FP16/BF16 TFLOPS or INT8 TOPS")
        raise NotModellable(f"catalog entry {spec.key} has no {what}")
    ops_per_s, figure, weights_at = peak
    basis = f"{figure} × efficiency {_two(factor)} ({factor_basis})"
    memory_s: float | None = None
    bandwidth = spec.memory_bandwidth_gbps
    if weight_bytes is None:
        basis += "; the model's weight bytes unknown: compute term only"
    elif not (bandwidth.known and bandwidth.value > 0):
        basis += "; memory bandwidth unknown: compute term only"
    else:
        read = weight_bytes * BYTES_PER_WEIGHT[weights_at] / _STORED_BYTES_PER_WEIGHT
        memory_s = read / (bandwidth.value * 1e9 * factor)
        basis += (f"; {read / 1e6:.3g} MB of {weights_at.upper()} weights read once per batch at "
                  f"memory_bandwidth_gbps={bandwidth.value:g} × {_two(factor)}")
    return Roofline(flops_per_sample / (ops_per_s * factor), memory_s, factor, basis)


def modelled_device_seconds(
    flops_per_sample: float | None,
    rows: int,
    spec: ChipSpec,
    *,
    weight_bytes: int | None = None,
    precision: str | None = None,
    efficiency: float | None = None,
) -> ModelledTime:
    """Modelled time for a batch of `rows` samples on the catalog chip `spec` (the roofline above).

    `weight_bytes`: the model's FP32 weight bytes (`ModelConfig.memory_bytes`), or `None` for the
    compute term alone. `efficiency`: `None` for the chip's own factor, else a what-if for any chip.
    """
    check_efficiency(efficiency)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if weight_bytes is not None and weight_bytes < 0:
        raise ValueError(f"weight_bytes must be >= 0, got {weight_bytes}")
    if flops_per_sample is None:
        return ModelledTime(None, reason="the model config has no flops_per_sample")
    if flops_per_sample < 0:
        raise ValueError(f"flops_per_sample must be >= 0, got {flops_per_sample}")
    try:
        line = roofline(spec, flops_per_sample, weight_bytes=weight_bytes, precision=precision,
                        efficiency=efficiency)
    except NotModellable as exc:
        return ModelledTime(None, reason=str(exc))
    bound = line.bound(rows)
    words = f"{bound} bound at {rows} row{'' if rows == 1 else 's'}"
    return ModelledTime(line.seconds(rows), basis=f"{line.basis}; {words}", bound=bound)
