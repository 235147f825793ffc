"""The ONNX Runtime runtimes kcloud ships: `onnxruntime-cpu` and `onnxruntime-cuda`, both
`SessionRuntime`s (the model runs in a session kcloud's own worker holds).

- `onnxruntime-cpu` serves CPUs, and emulated devices (they exist only in a farm file and
  compute on the host): `CPUExecutionProvider`, `threads` intra-op threads, one inter-op
  thread, sequential execution, all graph optimisations. Several small sessions beat one wide
  one on few cores (see `kcloud.runtimes.layout` and `benchmarks/runtime_layout.py`).
- `onnxruntime-cuda` serves real NVIDIA GPUs: `CUDAExecutionProvider` on the GPU's CUDA
  ordinal. It serves them whatever this process's onnxruntime build offers, because placement
  may run on another node than the session, and the deciding node's build says nothing about
  the serving node's. When the build there has no CUDA provider, or it fails to load (missing
  CUDA/cuDNN libraries), the session computes on the host CPU instead and says so loudly: a
  WARNING log line and a note on the `Device` (`attributes["runtime_note"]`) that every listing
  of the device shows.

Vendor NPUs (Rebellions, FuriosaAI, ...) and PIM have no ONNX Runtime provider: neither
runtime serves them, so placement rejects ONNX models there and a session there is an
`UnsupportedDeviceError`, until a runtime for them is installed. (Generative models reach
those NPUs through the engine runtimes, `kcloud.runtimes.vllm` and `kcloud.runtimes.furiosa_llm`.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import onnxruntime as ort

from kcloud.devices.device import Device
from kcloud.devices.plugin import device_ordinal
from kcloud.runtimes.plugin import RUNTIME_NOTE, ExecutionPlan, SessionRuntime, UnsupportedDeviceError

log = logging.getLogger(__name__)

#: `ModelConfig.platform` of ONNX models.
ONNX_PLATFORM = "onnxruntime"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return CUDA_PROVIDER in available_providers()


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


def device_index(device: Device) -> int:
    """The GPU's index on its node (NVML's): `attributes["index"]`, else the digits ending its id."""
    try:
        return device_ordinal(device)
    except ValueError:
        raise UnsupportedDeviceError(
            f"device {device.uid}: cannot tell its CUDA index from id {device.id!r}") from None


def cuda_ordinal(device: Device, environ: Mapping[str, str] | None = None) -> int:
    """The GPU's CUDA ordinal in a process that was not confined to it.

    Without CUDA_VISIBLE_DEVICES that is its index; with it (the server itself runs confined,
    e.g. in a container or a Ray actor) CUDA numbers only the listed GPUs, in list order, so
    the ordinal is the GPU's position in that list.
    """
    index = device_index(device)
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    tokens = [token.strip() for token in visible.split(",") if token.strip()]
    names = {str(index), device.attributes.get("uuid") or str(index)}  # CUDA takes an index or a UUID
    for position, token in enumerate(tokens):
        if token in names:
            return position
    raise UnsupportedDeviceError(
        f"device {device.uid} is not visible to this process (CUDA_VISIBLE_DEVICES={visible!r})")


def _note_fallback(device: Device, message: str) -> None:
    log.warning("%s", message)
    # Device is frozen, but its attributes dict is the one place every listing reads.
    device.attributes[RUNTIME_NOTE] = message


def _model_file(model_path: Path) -> str:
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    return str(model_path)


class OnnxRuntimeCpu(SessionRuntime):
    """ONNX models on the host CPU: CPUs, and emulated devices of any kind."""

    name = "onnxruntime-cpu"
    platforms = (ONNX_PLATFORM,)
    artifact_targets: ClassVar[dict[str, str | None]] = {"fp32": None, "fp16": "cpu-fp16", "int8": "cpu-int8"}

    def refusal(self, device: Device) -> str | None:
        if device.emulated or device.spec.kind == "cpu":
            return None
        return "runs on CPUs and emulated devices only"

    def plan(self, device: Device, *, confined: bool = False) -> ExecutionPlan:
        reason = (f"{device.uid} is emulated: the real computation runs on the host CPU" if device.emulated
                  else f"{device.uid} is a CPU")
        return ExecutionPlan(CPU_PROVIDER, None, True, reason, self.name)

    def create_session(
        self, model_path: Path, device: Device, plan: ExecutionPlan, *, threads: int
    ) -> ort.InferenceSession:
        path = _model_file(model_path)
        return ort.InferenceSession(path, sess_options=session_options(threads), providers=[CPU_PROVIDER])

    def visibility_env(self, device: Device) -> dict[str, str]:
        """Empty: the host CPU has no visibility variable, and an emulated device's vendor
        variable would name hardware that is not there."""
        return {}


class OnnxRuntimeCuda(SessionRuntime):
    """ONNX models on real NVIDIA GPUs through the CUDA execution provider."""

    name = "onnxruntime-cuda"
    platforms = (ONNX_PLATFORM,)
    artifact_targets: ClassVar[dict[str, str | None]] = {"fp32": None, "fp16": "cuda-fp16"}

    def refusal(self, device: Device) -> str | None:
        if device.emulated:
            return "runs on real NVIDIA GPUs only, not emulated devices"
        if device.spec.kind == "gpu" and device.vendor.lower() == "nvidia":
            return None
        return "runs on NVIDIA GPUs only"

    def plan(self, device: Device, *, confined: bool = False) -> ExecutionPlan:
        # Confined by CUDA_VISIBLE_DEVICES to this one GPU, CUDA renumbers it 0.
        device_id = 0 if confined else cuda_ordinal(device)
        return ExecutionPlan(CUDA_PROVIDER, device_id, False, f"{device.uid} is an NVIDIA GPU", self.name)

    def create_session(
        self, model_path: Path, device: Device, plan: ExecutionPlan, *, threads: int
    ) -> ort.InferenceSession:
        path = _model_file(model_path)
        options = session_options(threads)
        if not cuda_available():
            _note_fallback(device, (
                f"{device.uid}: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
                f"(providers: {', '.join(available_providers())}); computing on the host CPU instead. "
                "Install onnxruntime-gpu to use the GPU."
            ))
            return ort.InferenceSession(path, sess_options=options, providers=[CPU_PROVIDER])
        providers = [(CUDA_PROVIDER, {"device_id": plan.device_id}), CPU_PROVIDER]
        session = ort.InferenceSession(path, sess_options=options, providers=providers)
        # ORT quietly drops a provider whose libraries fail to load; check what it really took.
        if session.get_providers()[0] != CUDA_PROVIDER:
            _note_fallback(device, (
                f"{device.uid}: {CUDA_PROVIDER} is offered but failed to load (CUDA/cuDNN libraries?); "
                f"session runs on {session.get_providers()[0]} on the host instead"
            ))
        return session
