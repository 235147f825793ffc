"""The `kcloud.runtimes` entry points: discovery that never raises, and the runtimes' answers."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest
from synthetic_models import cpu_device, device_of

import kcloud.runtimes.plugin as plugin
from kcloud.runtimes import ONNX_PLATFORM, Runtime, UnsupportedDeviceError, installed_runtimes, runtime_for
from kcloud.runtimes.ort import OnnxRuntimeCpu, OnnxRuntimeCuda
from kcloud.runtimes.plugin import ENTRY_POINT_GROUP, load_runtimes, refusals


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed entry points with the ones a test gives."""
    def install(*eps: EntryPoint) -> None:
        monkeypatch.setattr(plugin, "entry_points", lambda group: [ep for ep in eps if ep.group == group])
    return install


def test_the_shipped_runtimes_are_installed_through_entry_points():
    names = [r.name for r in load_runtimes()]
    assert {"onnxruntime-cpu", "onnxruntime-cuda"} <= set(names)
    assert names == sorted(names)  # entry-point name order: the first that serves a device wins
    assert ENTRY_POINT_GROUP == "kcloud.runtimes"
    assert all(isinstance(r, Runtime) for r in installed_runtimes())
    assert installed_runtimes() is installed_runtimes()  # discovered once per process


def test_broken_and_foreign_plugins_are_skipped_with_a_warning(fake_entry_points, caplog):
    fake_entry_points(
        entry("a-missing", "kcloud_no_such_package.runtime:Runtime"),
        entry("b-raises", "fake_runtimes:broken_factory"),
        entry("c-not-a-runtime", "fake_runtimes:NotARuntime"),
        entry("d-npu", "fake_runtimes:NpuRuntime"),
        entry("e-cpu", "kcloud.runtimes.ort:OnnxRuntimeCpu"),
        entry("f-same-name", "fake_runtimes:SameNameAsCpu"),
    )
    with caplog.at_level(logging.WARNING, logger="kcloud.runtimes.plugin"):
        runtimes = load_runtimes()
    assert [r.name for r in runtimes] == ["rbln-fake", "onnxruntime-cpu"]
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "a-missing failed to load" in warnings
    assert "b-raises failed to load: vendor SDK missing" in warnings
    assert "c-not-a-runtime is a NotARuntime, not a kcloud.runtimes.Runtime: skipped" in warnings
    assert "f-same-name repeats the name 'onnxruntime-cpu': skipped" in warnings


def test_no_runtime_installed_says_so(fake_entry_points):
    fake_entry_points()
    assert load_runtimes() == []
    with pytest.raises(UnsupportedDeviceError, match=r"installed: none \(no package registers"):
        runtime_for(cpu_device(), ONNX_PLATFORM, runtimes=load_runtimes())


def test_each_device_gets_the_runtime_that_serves_it():
    runtimes = [OnnxRuntimeCpu(), OnnxRuntimeCuda()]

    def name(device):
        return runtime_for(device, ONNX_PLATFORM, runtimes).name

    assert name(cpu_device()) == "onnxruntime-cpu"
    assert name(device_of("furiosa-rngd", "npu0", emulated=True)) == "onnxruntime-cpu"
    assert name(device_of("nvidia-h100-sxm", "nvidia0")) == "onnxruntime-cuda"


def test_an_out_of_tree_runtime_serves_its_platform_only():
    from fake_runtimes import NpuRuntime

    runtimes = [OnnxRuntimeCpu(), NpuRuntime()]
    atom = device_of("rebellions-atom-ca22", "rbln0")
    assert runtime_for(atom, "rbln-fake", runtimes).name == "rbln-fake"
    assert refusals(atom, ONNX_PLATFORM, runtimes) == [
        ("onnxruntime-cpu", "runs on CPUs and emulated devices only"),
        ("rbln-fake", "runs rbln-fake models, not onnxruntime"),
    ]
    with pytest.raises(UnsupportedDeviceError, match="has no runtime that serves rbln-fake models"):
        runtime_for(cpu_device(), "rbln-fake", runtimes)
