"""`default_layout`: replicas × threads per device kind (the measured-best on CPUs)."""

from __future__ import annotations

import pytest
from synthetic_models import cpu_device, device_of

from kcloud.runtimes import UnsupportedDeviceError, default_layout, host_cores


def test_cpu_gets_one_single_thread_replica_per_core():
    # benchmarks/runtime_layout.py: on 2 cores 2 × 1 thread beat 1 × 2 threads (docs/runtime.md).
    assert default_layout(cpu_device(), 2) == (2, 1)
    assert default_layout(cpu_device(), 1) == (1, 1)


def test_emulated_device_shares_the_host_with_one_thread():
    assert default_layout(device_of("rebellions-atom-ca22", "atom0", emulated=True), 2) == (1, 1)


def test_gpu_gets_one_replica():
    assert default_layout(device_of("nvidia-h100-sxm", "nvidia0"), 16) == (1, 1)


def test_unsupported_device_and_bad_cores_are_refused():
    with pytest.raises(UnsupportedDeviceError):
        default_layout(device_of("furiosa-warboy", "npu0"), 2)
    with pytest.raises(ValueError, match="cores"):
        default_layout(cpu_device(), 0)


def test_host_cores_counts_this_process_affinity():
    assert host_cores() >= 1
