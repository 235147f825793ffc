"""Small hand-made ONNX models and configs for the repository and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.config import ModelConfig
from kcloud.models.configfile import save_config


def write_affine(path: Path, features: int = 4, batch: str | int = "batch") -> Path:
    """y = x @ W + b, x FP32 [batch, features], W [features, 3]: a real Gemm with known FLOPs."""
    weight = numpy_helper.from_array(np.arange(features * 3, dtype=np.float32).reshape(features, 3), "w")
    bias = numpy_helper.from_array(np.ones(3, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def affine_config(name: str = "affine", features: int = 4, **changes: object) -> ModelConfig:
    data: dict[str, object] = {
        "name": name,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, features]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        "batching": {"max_batch_size": 8},
    }
    data.update(changes)
    return ModelConfig.model_validate(data)


def affine_dir(root: Path, name: str = "affine", features: int = 4) -> Path:
    """A model directory in repository layout: config.toml + 1/model.onnx."""
    write_affine(root / "1" / "model.onnx", features)
    save_config(affine_config(name, features), root / "config.toml")
    return root
