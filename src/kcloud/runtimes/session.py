"""Sessions for ONNX models, built by whichever installed `SessionRuntime` serves the device.

Every replica (in a thread, a child process or later a Ray actor) builds its session through
these functions, so each device gets the same plan everywhere. Which runtime that is, and what
it does, is the runtimes' answer (`kcloud.runtimes.plugin`), not a vendor test here. Models
whose platform is served by an engine runtime (`kcloud.runtimes.engine`) have no session: asking
for a plan for them is an `UnsupportedDeviceError` that says so.
"""

from __future__ import annotations

from pathlib import Path

from kcloud.devices.device import Device
from kcloud.runtimes.ort import ONNX_PLATFORM
from kcloud.runtimes.plugin import ExecutionPlan, Session, SessionRuntime, UnsupportedDeviceError, runtime_for

__all__ = [
    "UnsupportedDeviceError", "create_session", "plan_for", "session_provider", "session_runtime_for",
    "worker_environment",
]


def session_runtime_for(device: Device, platform: str = ONNX_PLATFORM) -> SessionRuntime:
    """The runtime that builds sessions of `platform` models on `device`.

    `UnsupportedDeviceError` when no runtime serves it, or when the one that does runs its
    models in an engine process rather than a session (generative models)."""
    runtime = runtime_for(device, platform)
    if not isinstance(runtime, SessionRuntime):
        raise UnsupportedDeviceError(
            f"{runtime.name} runs {platform} models on {device.uid} in an engine process, not in a session")
    return runtime


def plan_for(device: Device, *, platform: str = ONNX_PLATFORM, confined: bool = False) -> ExecutionPlan:
    """How a session on `device` computes; `UnsupportedDeviceError` when no runtime serves it."""
    return session_runtime_for(device, platform).plan(device, confined=confined)


def create_session(
    weights_path: str | Path, device: Device, *, threads: int, confined: bool = False
) -> Session:
    """A session for `weights_path`, computing on `device` with `threads` threads.

    `confined`: this process was started with `worker_environment(device)`, so the device is
    the only one of its vendor it sees (and its ordinal there is 0). `UnsupportedDeviceError`
    for a device no runtime serves, `FileNotFoundError` for a missing model file.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    runtime = session_runtime_for(device)
    return runtime.create_session(path, device, runtime.plan(device, confined=confined), threads=threads)


def worker_environment(device: Device, *, platform: str = ONNX_PLATFORM) -> dict[str, str]:
    """Variables a worker process for `device` starts with, so that it sees only that device
    (`CUDA_VISIBLE_DEVICES=…` for an NVIDIA GPU; nothing for a CPU or an emulated device)."""
    return runtime_for(device, platform).visibility_env(device)


def session_provider(session: Session) -> str:
    """The provider that computes most of this session's graph (the first one it accepted)."""
    return session.get_providers()[0]
