"""Small real ONNX models for runtime and serving tests, built with `onnx.helper` and added to a
real `ModelRepository`, plus real `Device`s built from the real catalog.

Shared by `tests/runtime` and `tests/serving/test_{worker,batcher,replica,router,metrics}.py`
(they put this directory on `sys.path`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.config import Batching, ModelConfig, TensorSpec
from kcloud.models.configfile import save_config
from kcloud.models.repository import ModelEntry, ModelRepository

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_double(path: Path, features: int = 4) -> Path:
    """y = 2·x for x FP32 [-1, features]: each row's answer tells which request it belongs to."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[two],
    )
    return _save(graph, path)


def build_slow(path: Path, width: int = 512, layers: int = 16) -> Path:
    """x FP32 [-1, width] through `layers` × (MatMul width×width, Tanh): about
    2·width²·layers FLOPs a row (8.4 MFLOP with the defaults), so a batch takes a measurable while."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    weight = numpy_helper.from_array(values, "w")
    nodes = []
    current = "x"
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{layer}"]))
        out = "y" if layer == layers - 1 else f"t{layer}"
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[weight],
    )
    return _save(graph, path)


def add_model(
    repo: ModelRepository,
    name: str,
    onnx_file: Path,
    features: int,
    *,
    max_batch_size: int = 16,
    max_queue_delay_ms: float = 2.0,
    queue_limit: int = 1024,
    flops_per_sample: float | None = None,
) -> ModelEntry:
    """Add a one-input, one-output FP32 model with the given batching to `repo`."""
    source = onnx_file.parent / f"src-{name}"
    source.mkdir(parents=True, exist_ok=True)
    (source / "model.onnx").write_bytes(onnx_file.read_bytes())
    config = ModelConfig(
        name=name,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, features])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, features])],
        batching=Batching(max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                          queue_limit=queue_limit),
        flops_per_sample=flops_per_sample,
    )
    save_config(config, source / "config.toml")
    return repo.add(source)


def cpu_device(node: str = "test-node") -> Device:
    """The host CPU as a `Device` (catalog row `cpu-generic`)."""
    return Device(id="cpu0", node=node, plugin="cpu", vendor="cpu", spec=load_catalog().get("cpu-generic"),
                  name="host CPU")


def device_of(chip: str, device_id: str, *, vendor: str | None = None, emulated: bool = False,
              attributes: dict[str, str] | None = None, node: str = "test-node") -> Device:
    """A device of catalog row `chip` (real unless `emulated`), as a plugin would describe it."""
    spec = load_catalog().get(chip)
    return Device(id=device_id, node=node, plugin=vendor or spec.vendor, vendor=vendor or spec.vendor,
                  spec=spec, name=spec.card or spec.chip, emulated=emulated,
                  attributes=dict(attributes or {}))
