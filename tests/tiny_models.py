"""A tiny real model for the tests: y = 2·x, declaring the figures placement, the twin and costs read."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.config import Batching, ModelConfig, TensorSpec
from kcloud.models.configfile import save_config
from kcloud.models.repository import ModelRepository


def build_model(
    repo: ModelRepository,
    name: str,
    *,
    memory_bytes: int | None = 100 * 2**20,
    flops_per_sample: float | None = 1e9,
    device_kinds: tuple[str, ...] = ("cpu", "gpu", "npu"),
    features: int = 4,
    max_queue_delay_ms: float = 1.0,
) -> None:
    """Add y = 2·x (FP32 [-1, features]) to `repo`, declaring the memory and FLOPs placement uses."""
    source = repo.root.parent / f"src-{name}"
    source.mkdir(parents=True, exist_ok=True)
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(source / "model.onnx"))
    config = ModelConfig(
        name=name,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, features])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, features])],
        batching=Batching(max_batch_size=16, max_queue_delay_ms=max_queue_delay_ms),
        device_kinds=list(device_kinds),  # type: ignore[arg-type]
        flops_per_sample=flops_per_sample,
        memory_bytes=memory_bytes,
    )
    save_config(config, source / "config.toml")
    repo.add(source)
