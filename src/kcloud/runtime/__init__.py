"""kcloud.runtime: ONNX Runtime sessions laid out per device, and modelled time for emulated ones."""

from kcloud.runtime.layout import default_layout, host_cores
from kcloud.runtime.modelled import DEFAULT_EFFICIENCY, ModelledTime, modelled_device_seconds
from kcloud.runtime.session import (
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
