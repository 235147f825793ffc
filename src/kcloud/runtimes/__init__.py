"""kcloud.runtimes: the `kcloud.runtimes` plugins that run models on devices (ONNX sessions
through `SessionRuntime`s, generative models in engine processes through `EngineRuntime`s),
sessions built through them, their layout per device, and modelled time for emulated devices."""

from kcloud.runtimes.engine import TRANSFORMERS, EngineLaunch, EngineModel, EngineModelError, EngineRuntime
from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.runtimes.modelled import (
    DEFAULT_EFFICIENCY,
    ModelledTime,
    chip_efficiency,
    modelled_device_seconds,
)
from kcloud.runtimes.ort import ONNX_PLATFORM, cuda_available
from kcloud.runtimes.plugin import (
    ExecutionPlan,
    Runtime,
    SessionRuntime,
    UnsupportedDeviceError,
    installed_runtimes,
    load_runtimes,
    runtime_for,
)
from kcloud.runtimes.session import create_session, plan_for, worker_environment

__all__ = [
    "DEFAULT_EFFICIENCY",
    "ONNX_PLATFORM",
    "TRANSFORMERS",
    "EngineLaunch",
    "EngineModel",
    "EngineModelError",
    "EngineRuntime",
    "ExecutionPlan",
    "ModelledTime",
    "Runtime",
    "SessionRuntime",
    "UnsupportedDeviceError",
    "chip_efficiency",
    "create_session",
    "cuda_available",
    "default_layout",
    "host_cores",
    "installed_runtimes",
    "load_runtimes",
    "modelled_device_seconds",
    "plan_for",
    "runtime_for",
    "worker_environment",
]
