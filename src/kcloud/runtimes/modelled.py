"""Modelled device time for emulated devices: what the catalog chip would have taken.

An emulated device computes on the host, so its measured time says nothing about the chip it
stands for. Next to the real time we record a *modelled* one, from the chip's sourced peak:

    modelled_s = flops_per_sample × rows / (peak_flops × efficiency)

- `peak_flops` is the catalog's dense FP16 (or BF16) TFLOPS: the models we serve are float
  graphs, and a float figure is what a float graph would run at. Without a float figure the
  INT8 TOPS stand in (the chip would serve a quantised model), and the basis says so.
- `efficiency` is the fraction of peak a chip reaches on a real network. The default 0.4 comes
  from the measured MLPerf Inference results in `shared/reference/chips.md` (closed division,
  ResNet-50 Offline, 8.2 G operations per image = 2 × 4.1 GMAC):
  Rebellions ATOM 7,245.87 samples/s × 8.2 G / 128 INT8 TOPS = 0.46;
  FuriosaAI Warboy 2,758.44 samples/s × 8.2 G / 64 INT8 TOPS = 0.35. Their mean is 0.41.
  It is a model parameter, not a measurement of this chip on this model; pass another one to
  `modelled_device_seconds` to ask "what if".

Anything unknown (the model's FLOPs, the chip's peak) gives `seconds=None` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcloud.devices.spec import ChipSpec

#: Fraction of the sourced peak a chip reaches on a real model (see the module docstring).
DEFAULT_EFFICIENCY = 0.4
#: ResNet-50 v1.5 operations per 224×224 image (2 × 4.1 GMAC), for the derivation above.
RESNET50_OPS_PER_SAMPLE = 8.2e9


@dataclass(frozen=True)
class ModelledTime:
    """A modelled device time (never a measurement); `seconds` is `None` when it cannot be modelled."""

    seconds: float | None
    basis: str | None = None  # e.g. "fp16_tflops=256 × efficiency 0.4"
    reason: str | None = None  # why `seconds` is None
    modelled: bool = True


def peak_ops_per_second(spec: ChipSpec) -> tuple[float, str] | None:
    """The chip's dense peak in operations/s and which catalog figure it came from."""
    for field_name in ("fp16_tflops", "bf16_tflops"):
        figure = getattr(spec, field_name)
        if figure.known and figure.value > 0:
            return figure.value * 1e12, f"{field_name}={figure.value:g}"
    if spec.int8_tops.known and spec.int8_tops.value > 0:
        return spec.int8_tops.value * 1e12, f"int8_tops={spec.int8_tops.value:g} (no float figure)"
    return None


def modelled_device_seconds(
    flops_per_sample: float | None, rows: int, spec: ChipSpec, *, efficiency: float = DEFAULT_EFFICIENCY
) -> ModelledTime:
    """Modelled time for `rows` samples on the catalog chip `spec`."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if flops_per_sample is None:
        return ModelledTime(None, reason="the model config has no flops_per_sample")
    if flops_per_sample < 0:
        raise ValueError(f"flops_per_sample must be >= 0, got {flops_per_sample}")
    peak = peak_ops_per_second(spec)
    if peak is None:
        return ModelledTime(None, reason=f"catalog entry {spec.key} has no FP16/BF16 TFLOPS or INT8 TOPS")
    ops_per_s, figure = peak
    seconds = flops_per_sample * rows / (ops_per_s * efficiency)
    return ModelledTime(seconds, basis=f"{figure} × efficiency {efficiency:g}")
