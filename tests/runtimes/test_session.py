"""`create_session` / `plan_for`: the provider and thread layout each device kind gets, as the
installed runtimes (`onnxruntime-cpu`, `onnxruntime-cuda`) plan it."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from synthetic_models import build_double, cpu_device, device_of

from kcloud.runtimes import UnsupportedDeviceError, create_session, cuda_available, plan_for
from kcloud.runtimes.ort import CPU_PROVIDER, CUDA_PROVIDER, cuda_ordinal, device_index, session_options
from kcloud.runtimes.plugin import RUNTIME_NOTE


@pytest.fixture(scope="module")
def double_onnx(tmp_path_factory):
    return build_double(tmp_path_factory.mktemp("m") / "double.onnx")


def test_cpu_session_layout(double_onnx):
    session = create_session(double_onnx, cpu_device(), threads=1)
    assert session.get_providers() == [CPU_PROVIDER]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * x)


def test_session_options_are_the_documented_layout():
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="threads"):
        session_options(0)


def test_emulated_npu_computes_on_host(double_onnx):
    device = device_of("furiosa-rngd", "rngd0", emulated=True)
    plan = plan_for(device)
    assert plan.provider == CPU_PROVIDER and plan.on_host and "emulated" in plan.reason
    assert plan.runtime == "onnxruntime-cpu"
    assert create_session(double_onnx, device, threads=1).get_providers() == [CPU_PROVIDER]


@pytest.mark.parametrize("chip,device_id", [("rebellions-atom-ca22", "rbln0"), ("furiosa-rngd", "npu0"),
                                            ("pim-samsung-skhynix", "pim0")])
def test_a_device_no_runtime_serves_is_a_clear_error(double_onnx, chip, device_id):
    device = device_of(chip, device_id)
    with pytest.raises(UnsupportedDeviceError) as caught:
        create_session(double_onnx, device, threads=1)
    message = str(caught.value)
    assert message.startswith(
        f"device test-node/{device_id} ({device.vendor} {device.spec.chip}, kind {device.spec.kind}) "
        "has no runtime that serves onnxruntime models on it; installed: ")
    assert "onnxruntime-cpu (runs on CPUs and emulated devices only)" in message
    assert "onnxruntime-cuda (runs on NVIDIA GPUs only)" in message


def test_nvidia_gpu_plans_cuda_on_its_ordinal_and_on_0_when_confined(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = device_of("nvidia-h100-sxm", "nvidia3", attributes={"index": "3"})
    plan = plan_for(device)
    assert (plan.runtime, plan.provider, plan.device_id) == ("onnxruntime-cuda", CUDA_PROVIDER, 3)
    assert not plan.on_host
    # A worker confined by CUDA_VISIBLE_DEVICES=3 sees that GPU alone, and CUDA numbers it 0.
    assert plan_for(device, confined=True).device_id == 0


def test_an_unconfined_process_counts_its_own_visible_gpus():
    device = device_of("nvidia-h100-sxm", "nvidia3", attributes={"index": "3", "uuid": "GPU-abc"})
    assert cuda_ordinal(device, {}) == 3
    assert cuda_ordinal(device, {"CUDA_VISIBLE_DEVICES": "1,3"}) == 1
    assert cuda_ordinal(device, {"CUDA_VISIBLE_DEVICES": "GPU-x, GPU-abc"}) == 1
    with pytest.raises(UnsupportedDeviceError, match="not visible to this process"):
        cuda_ordinal(device, {"CUDA_VISIBLE_DEVICES": "0"})


def test_an_emulated_gpu_is_served_on_the_host_not_by_cuda():
    plan = plan_for(device_of("nvidia-h100-sxm", "nvidia0", emulated=True))
    assert (plan.runtime, plan.provider, plan.on_host) == ("onnxruntime-cpu", CPU_PROVIDER, True)


def test_missing_model_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.onnx"):
        create_session(tmp_path / "nowhere.onnx", cpu_device(), threads=1)


def test_nvidia_index_from_attributes_or_id():
    assert device_index(device_of("nvidia-h100-sxm", "nvidia3")) == 3
    assert device_index(device_of("nvidia-h100-sxm", "gpu-a", attributes={"index": "1"})) == 1
    with pytest.raises(UnsupportedDeviceError, match="CUDA index"):
        device_index(device_of("nvidia-h100-sxm", "gpu-a"))


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has CUDA: the fallback cannot happen")
def test_nvidia_without_cuda_provider_falls_back_loudly(double_onnx, caplog):
    device = device_of("nvidia-h100-sxm", "nvidia0", attributes={"index": "0"})
    with caplog.at_level(logging.WARNING, logger="kcloud.runtimes.ort"):
        session = create_session(double_onnx, device, threads=1)
    assert session.get_providers() == [CPU_PROVIDER]
    assert CUDA_PROVIDER in device.attributes[RUNTIME_NOTE]
    assert "host CPU" in device.attributes[RUNTIME_NOTE]
    assert any(CUDA_PROVIDER in record.getMessage() for record in caplog.records)


@pytest.mark.gpu
def test_cuda_session_on_gpu(double_onnx):
    """Runs where onnxruntime offers CUDA and NVML sees a GPU (the lead runs it on a lent H100)."""
    if not cuda_available():
        pytest.skip(f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (install onnxruntime-gpu)")
    from kcloud.devices.plugins.nvidia import NvidiaPlugin

    devices = NvidiaPlugin().discover("test-node")
    if not devices:
        pytest.skip("no NVIDIA GPU visible through NVML")
    device = devices[0]
    session = create_session(double_onnx, device, threads=1)
    assert session.get_providers()[0] == CUDA_PROVIDER, device.attributes.get(RUNTIME_NOTE)
    assert RUNTIME_NOTE not in device.attributes
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * x)
