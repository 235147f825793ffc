"""ONNX Runtime sessions laid out for the device they run on.

One function decides, per device, which execution provider computes and how many threads it
may use, so that every replica (in a thread, a child process or later a Ray actor) builds its
session the same way:

- CPU, and emulated devices (they exist only in a farm file and compute on the host):
  `CPUExecutionProvider`, `threads` intra-op threads, one inter-op thread, sequential
  execution, all graph optimisations. Several small sessions beat one wide one on few cores
  (see `kcloud.runtimes.layout` and `benchmarks/runtime_layout.py`).
- NVIDIA GPUs: `CUDAExecutionProvider` on the device's index. When this onnxruntime build has
  no CUDA provider, or it fails to load (missing CUDA/cuDNN libraries), the session computes
  on the host CPU instead, and says so loudly: a WARNING log line and a note on the `Device`
  (`attributes["runtime_note"]`) that every listing of the device shows.
- Vendor NPUs (Rebellions, FuriosaAI, ...) and PIM: ONNX Runtime has no provider for them,
  so asking for one is an `UnsupportedDeviceError` that names the device and its runtime.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from kcloud.devices.device import Device

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

#: `Device.attributes` key where a runtime fallback is written down for listings to show.
RUNTIME_NOTE = "runtime_note"


class UnsupportedDeviceError(RuntimeError):
    """The device has no ONNX Runtime execution provider; kcloud cannot place ONNX models on it."""


@dataclass(frozen=True)
class ExecutionPlan:
    """Where a session computes: the provider wanted, and why (for logs and listings)."""

    provider: str
    device_id: int | None
    on_host: bool
    reason: str


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return CUDA_PROVIDER in available_providers()


def device_index(device: Device) -> int:
    """The CUDA ordinal of an NVIDIA device: `attributes["index"]`, else the digits ending its id."""
    index = device.attributes.get("index")
    if index is not None and str(index).isdigit():
        return int(index)
    match = re.search(r"(\d+)$", device.id)
    if match is None:
        raise UnsupportedDeviceError(f"device {device.uid}: cannot tell its CUDA index from id {device.id!r}")
    return int(match.group(1))


def plan_for(device: Device) -> ExecutionPlan:
    """Choose the execution provider for a device; raise `UnsupportedDeviceError` when there is none."""
    kind = device.spec.kind
    if device.emulated:
        return ExecutionPlan(CPU_PROVIDER, None, True,
                             f"{device.uid} is emulated: the real computation runs on the host CPU")
    if kind == "cpu":
        return ExecutionPlan(CPU_PROVIDER, None, True, f"{device.uid} is a CPU")
    if kind == "gpu" and device.vendor.lower() == "nvidia":
        return ExecutionPlan(CUDA_PROVIDER, device_index(device), False, f"{device.uid} is an NVIDIA GPU")
    runtimes = ", ".join(device.runtimes) or "none known"
    raise UnsupportedDeviceError(
        f"device {device.uid} ({device.vendor} {device.spec.chip}, kind {kind}) has no ONNX Runtime "
        f"execution provider; its vendor runtime ({runtimes}) is needed to serve on it"
    )


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a replica's session: `threads` intra-op threads and nothing running beside them.

    One inter-op thread and sequential execution because a replica runs one batch at a time;
    parallelism across batches comes from more replicas, which measured better on few cores.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's own warnings would drown ours
    return options


def _note_fallback(device: Device, message: str) -> None:
    log.warning("%s", message)
    # Device is frozen, but its attributes dict is the one place every listing reads.
    device.attributes[RUNTIME_NOTE] = message


def create_session(onnx_path: str | Path, device: Device, *, threads: int) -> ort.InferenceSession:
    """An `InferenceSession` for `onnx_path`, computing on `device` with `threads` threads.

    Raises `UnsupportedDeviceError` for devices ONNX Runtime cannot drive, `FileNotFoundError`
    for a missing model file.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    plan = plan_for(device)
    options = session_options(threads)
    if plan.provider == CPU_PROVIDER:
        return ort.InferenceSession(str(path), sess_options=options, providers=[CPU_PROVIDER])

    if not cuda_available():
        _note_fallback(device, (
            f"{device.uid}: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            f"(providers: {', '.join(available_providers())}); computing on the host CPU instead. "
            "Install onnxruntime-gpu to use the GPU."
        ))
        return ort.InferenceSession(str(path), sess_options=options, providers=[CPU_PROVIDER])
    session = ort.InferenceSession(
        str(path), sess_options=options,
        providers=[(CUDA_PROVIDER, {"device_id": plan.device_id}), CPU_PROVIDER],
    )
    # ORT quietly drops a provider whose libraries fail to load; check what it really took.
    if session.get_providers()[0] != CUDA_PROVIDER:
        _note_fallback(device, (
            f"{device.uid}: {CUDA_PROVIDER} is offered but failed to load (CUDA/cuDNN libraries?); "
            f"session runs on {session.get_providers()[0]} on the host instead"
        ))
    return session


def session_provider(session: ort.InferenceSession) -> str:
    """The provider that computes most of this session's graph (the first one it accepted)."""
    return session.get_providers()[0]
