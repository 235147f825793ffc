"""Sessions for ONNX models, built by whichever installed runtime serves the device.

Every replica (in a thread, a child process or later a Ray actor) builds its session through
these functions, so each device gets the same plan everywhere. Which runtime that is, and what
it does, is the runtimes' answer (`kcloud.runtimes.plugin`), not a vendor test here.
"""

from __future__ import annotations

from pathlib import Path

from kcloud.devices.device import Device
from kcloud.runtimes.ort import ONNX_PLATFORM
from kcloud.runtimes.plugin import ExecutionPlan, Session, UnsupportedDeviceError, runtime_for

__all__ = ["UnsupportedDeviceError", "create_session", "plan_for", "session_provider", "worker_environment"]


def plan_for(device: Device, *, platform: str = ONNX_PLATFORM, confined: bool = False) -> ExecutionPlan:
    """How a session on `device` computes; `UnsupportedDeviceError` when no runtime serves it."""
    return runtime_for(device, platform).plan(device, confined=confined)


def create_session(
    onnx_path: str | Path, device: Device, *, threads: int, confined: bool = False
) -> Session:
    """A session for `onnx_path`, computing on `device` with `threads` threads.

    `confined`: this process was started with `worker_environment(device)`, so the device is
    the only one of its vendor it sees (and its ordinal there is 0). `UnsupportedDeviceError`
    for a device no runtime serves, `FileNotFoundError` for a missing model file.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    runtime = runtime_for(device, ONNX_PLATFORM)
    return runtime.create_session(path, device, runtime.plan(device, confined=confined), threads=threads)


def worker_environment(device: Device, *, platform: str = ONNX_PLATFORM) -> dict[str, str]:
    """Variables a worker process for `device` starts with, so that it sees only that device
    (`CUDA_VISIBLE_DEVICES=…` for an NVIDIA GPU; nothing for a CPU or an emulated device)."""
    return runtime_for(device, platform).visibility_env(device)


def session_provider(session: Session) -> str:
    """The provider that computes most of this session's graph (the first one it accepted)."""
    return session.get_providers()[0]
