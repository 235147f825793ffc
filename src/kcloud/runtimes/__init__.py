"""kcloud.runtimes: ONNX Runtime sessions laid out per device, and modelled time for emulated ones."""

from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.runtimes.modelled import DEFAULT_EFFICIENCY, ModelledTime, modelled_device_seconds
from kcloud.runtimes.session import (
    ExecutionPlan,
    UnsupportedDeviceError,
    create_session,
    cuda_available,
    plan_for,
)

__all__ = [
    "DEFAULT_EFFICIENCY",
    "ExecutionPlan",
    "ModelledTime",
    "UnsupportedDeviceError",
    "create_session",
    "cuda_available",
    "default_layout",
    "host_cores",
    "modelled_device_seconds",
    "plan_for",
]
