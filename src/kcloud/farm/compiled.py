"""Which artifact a replica serves: the deployment's precision, on the device placement chose.

A deployment that asks for a precision (`constraints.precision`) is served, on each device, by
the artifact of the target that device's runtime runs for that precision
(`Runtime.artifact_targets`: int8 on a CPU or an emulated NPU is `cpu-int8`, fp16 on an NVIDIA
GPU is `cuda-fp16`), compiled on first use when none is cached and refused with the gate's reason
when the build misses it. A deployment without a precision, or asking for the source's own
(fp32 on ONNX Runtime), serves the source graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcloud.devices.device import Device
from kcloud.models.repository import ModelEntry
from kcloud.runtimes.ort import ONNX_PLATFORM
from kcloud.runtimes.plugin import UnsupportedDeviceError, runtime_for


@dataclass(frozen=True)
class ArtifactChoice:
    """The target a replica needs and why (None: the source graph)."""

    target: str | None
    reason: str


def choose_target(entry: ModelEntry, device: Device, precision: str | None) -> ArtifactChoice:
    if precision is None or entry.config.platform != ONNX_PLATFORM:
        return ArtifactChoice(None, "no precision asked: the source graph")
    runtime = runtime_for(device, entry.config.platform)
    if not runtime.artifact_targets:
        return ArtifactChoice(None, f"{runtime.name} loads the model at its own precision")
    if precision not in runtime.artifact_targets:
        raise UnsupportedDeviceError(
            f"{runtime.name} cannot run {precision} on {device.uid}; it runs "
            f"{', '.join(runtime.artifact_targets)}"
        )
    target = runtime.artifact_targets[precision]
    if target is None:
        return ArtifactChoice(None, f"{precision} asked: {runtime.name} runs the source graph as it is")
    reason = f"{precision} asked: {runtime.name} on {device.uid} runs {precision} as {target}"
    return ArtifactChoice(target, reason)


def compile_refusal(entry: ModelEntry, precision: str | None) -> str | None:
    """Why no replica of `entry` could be served at `precision` (None: nothing stands in the way).

    Asked when a deployment is created or its constraints change, so that a request that could
    only fail at every replica start is refused at once: an ONNX model asked for another precision
    than its source's needs calibration data to compile and judge the artifact, unless an
    artifact of that precision is built already."""
    if precision in (None, "fp32") or entry.config.platform != ONNX_PLATFORM:
        return None
    if entry.config.accuracy is not None and entry.config.accuracy.dataset:
        return None
    from kcloud.models.artifacts import list_artifacts

    if any(a is not None and a.record.get("precision") == precision for _, a, _ in list_artifacts(entry)):
        return None
    return (
        f"model {entry.config.name!r} has no calibration data (config key `accuracy.dataset`), so its "
        f"{precision} artifact cannot be compiled and checked; add a data set, or leave out the precision"
    )


def served_entry(entry: ModelEntry, device: Device, precision: str | None) -> tuple[ModelEntry, str]:
    """`entry` as the replica on `device` serves it, and the reason; compiles on first use.

    Raises the compiler's `ModelFileError`s (a refused build says by how much it missed the gate)."""
    choice = choose_target(entry, device, precision)
    if choice.target is None:
        return entry, choice.reason
    from kcloud.models.artifacts import with_artifact
    from kcloud.models.compiler import compile_model

    result = compile_model(entry, choice.target)
    built = "cached" if result.cached else "compiled on first use"
    return with_artifact(entry, result.artifact), f"{choice.reason} ({built}: {result.artifact.summary()})"
