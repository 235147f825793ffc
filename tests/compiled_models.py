"""A small model with its own labelled data set, for the compiler's tests (models and farm).

`mlp`: y = relu(x @ W1) @ W2, x FP32 [batch, 16], y FP32 [batch, 8], two weight MatMuls that
INT8 quantizes. Its data set holds 40 samples with the FP32 outputs as `cosine` references, so a
faithful artifact scores ~1.0; `ratio = 1.0` makes a gate no quantized graph can pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.config import AccuracyTarget, Batching, ModelConfig, TensorSpec
from kcloud.models.configfile import save_config

FEATURES, HIDDEN, OUTPUTS, SAMPLES = 16, 32, 8, 40


def mlp_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32),
        rng.normal(size=(HIDDEN, OUTPUTS)).astype(np.float32),
    )


def write_mlp_onnx(path: Path, seed: int = 0) -> None:
    w1, w2 = mlp_weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_mlp_model(
    root: Path, name: str = "mlp", *, ratio: float = 0.99, dataset: bool = True, memory_bytes: int = 2**20
) -> Path:
    """A model directory `root/name` ready for `ModelRepository.add`."""
    directory = root / name
    write_mlp_onnx(directory / "1" / "model.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    w1, w2 = mlp_weights()
    reference = np.maximum(x @ w1, 0) @ w2
    config = ModelConfig(
        name=name,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, FEATURES])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, OUTPUTS])],
        batching=Batching(max_batch_size=16, max_queue_delay_ms=1.0),
        flops_per_sample=2.0 * (FEATURES * HIDDEN + HIDDEN * OUTPUTS),
        memory_bytes=memory_bytes,
        accuracy=AccuracyTarget(metric="cosine", reference=1.0, ratio=ratio, dataset="data.npz")
        if dataset
        else None,
    )
    if dataset:
        np.savez(directory / "data.npz", **{"input.x": x, "reference": reference})
    save_config(config, directory / "config.toml")
    return directory
