"""Reading ONNX graphs: signatures, FLOPs from shapes, config files round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from model_files import affine_config, write_affine
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.configfile import load_config, save_config
from kcloud.models.errors import ModelFileError
from kcloud.models.graph import count_flops, load_onnx, read_signature
from kcloud.models.repository import ModelRepository


def _conv_model(channels_in: int = 3, channels_out: int = 5) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((channels_out, channels_in, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("MatMul", ["y", "m"], ["z"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels_in, "h", 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", channels_out, "h", 2])],
        initializer=[weight, numpy_helper.from_array(np.ones((6, 2), np.float32), "m")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_follow_shapes_through_the_graph() -> None:
    model = _conv_model()
    conv = 2 * (5 * 4 * 6) * (3 * 9)  # output [1,5,4,6], each a 3x3x3 dot product
    matmul = 2 * (5 * 4 * 2) * 6
    assert count_flops(model, {"h": 4}) == conv + matmul
    assert count_flops(model) is None, "an unresolved dimension gives unknown, not a partial count"


def test_signature_is_read_and_cached(tmp_path: Path) -> None:
    path = write_affine(tmp_path / "1" / "model.onnx", features=7)
    signature = read_signature(path)
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("x", "FP32", (-1, 7))]
    assert signature.weights_bytes == (7 * 3 + 3) * 4
    assert (tmp_path / "1" / "graph-signature.json").is_file()


def test_load_onnx_refuses_an_invalid_graph(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    try:
        load_onnx(path)
    except ModelFileError as exc:
        assert "bad.onnx: invalid ONNX model" in str(exc) and "NoSuchOp" in str(exc)
    else:
        raise AssertionError("an unknown operator must be refused")


def test_symbolic_inner_dimension_leaves_flops_unknown(tmp_path: Path) -> None:
    entry = ModelRepository(tmp_path / "repo").add(write_affine(tmp_path / "m.onnx", features=4))
    assert entry.config.flops_per_sample == 24.0
    model = _conv_model()
    onnx.save(model, str(tmp_path / "conv.onnx"))
    conv = ModelRepository(tmp_path / "repo").add(tmp_path / "conv.onnx")
    assert conv.config.flops_per_sample is None
    assert [t.shape for t in conv.config.inputs] == [[-1, 3, -1, 6]]


def test_config_round_trip_and_missing_key(tmp_path: Path) -> None:
    config = affine_config(accuracy={"metric": "top1", "reference": 0.9, "dataset": "d.npz"})
    save_config(config, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == config
    (tmp_path / "config.toml").write_text('name = "x"\n')
    try:
        load_config(tmp_path / "config.toml")
    except ModelFileError as exc:
        assert "config.toml: key `inputs`: missing required key" in str(exc)
    else:
        raise AssertionError("a config without inputs must be refused")
