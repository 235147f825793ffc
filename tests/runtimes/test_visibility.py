"""The environment that confines a worker process to its device, per vendor.

The variable names and value formats are Ray's (python/ray/_private/accelerators/: nvidia_gpu.py,
rbln.py, furiosa.py); the device plugins declare them and the runtimes hand them to workers.
"""

from __future__ import annotations

import logging

import pytest
from synthetic_models import cpu_device, device_of

from kcloud.devices.plugin import plugin_class
from kcloud.devices.plugins.furiosa import FuriosaPlugin
from kcloud.devices.plugins.nvidia import NvidiaPlugin
from kcloud.devices.plugins.rebellions import RebellionsPlugin
from kcloud.runtimes import UnsupportedDeviceError, worker_environment
from kcloud.runtimes.ort import OnnxRuntimeCpu, OnnxRuntimeCuda


def test_a_cpu_worker_gets_no_variable():
    assert worker_environment(cpu_device()) == {}


def test_an_nvidia_worker_sees_its_gpu_alone():
    gpu = device_of("nvidia-h100-sxm", "nvidia2", attributes={"index": "2"})
    assert worker_environment(gpu) == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_an_nvidia_gpu_with_a_uuid_is_named_by_it():
    uuid = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
    gpu = device_of("nvidia-h100-sxm", "nvidia2", attributes={"index": "2", "uuid": uuid})
    assert worker_environment(gpu)["CUDA_VISIBLE_DEVICES"] == uuid


def test_an_emulated_device_names_no_hardware():
    # Its vendor has a variable, but the device is not on the node: nothing to hide or show.
    for chip in ("nvidia-h100-sxm", "rebellions-atom-ca22", "furiosa-rngd"):
        assert worker_environment(device_of(chip, "x0", emulated=True)) == {}


@pytest.mark.parametrize("plugin,device,expected", [
    (RebellionsPlugin, device_of("rebellions-atom-ca22", "rbln3"), {"RBLN_DEVICES": "3"}),
    (FuriosaPlugin, device_of("furiosa-rngd", "npu1"), {"FURIOSA_DEVICES": "npu:1"}),
    (NvidiaPlugin, device_of("nvidia-h100-sxm", "gpu-a", attributes={"index": "5"}),
     {"CUDA_VISIBLE_DEVICES": "5", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
])
def test_vendor_variables_are_rays(plugin, device, expected):
    assert plugin.visibility_env(device) == expected


def test_the_runtime_takes_the_variable_from_the_device_plugin():
    # An out-of-tree RBLN runtime inherits `Runtime.visibility_env`, which asks the device's plugin.
    from fake_runtimes import NpuRuntime

    atom = device_of("rebellions-atom-ca22", "rbln0")
    assert plugin_class("rebellions") is RebellionsPlugin
    assert NpuRuntime().visibility_env(atom) == {"RBLN_DEVICES": "0"}
    assert OnnxRuntimeCuda().visibility_env(device_of("nvidia-h100-sxm", "nvidia1")) == {
        "CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert OnnxRuntimeCpu().visibility_env(atom) == {}  # host compute: nothing to confine


def test_a_device_whose_index_is_unknown_is_refused():
    with pytest.raises(UnsupportedDeviceError, match="cannot tell its index"):
        worker_environment(device_of("nvidia-h100-sxm", "gpu-a"))


def test_a_device_of_an_unknown_plugin_gets_nothing_and_a_warning(caplog):
    gpu = device_of("nvidia-h100-sxm", "nvidia0", vendor="nvidia")
    alien = type(gpu)(**{**gpu.__dict__, "plugin": "not-installed"})
    with caplog.at_level(logging.WARNING, logger="kcloud.runtimes.plugin"):
        assert worker_environment(alien) == {}
    assert "no installed device plugin 'not-installed'" in caplog.text
