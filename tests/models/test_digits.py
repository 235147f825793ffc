"""digits-cnn: trained here in numpy, exported to ONNX, scored on its held-out split."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kcloud.models import digits as digits_builder
from kcloud.models.datasets import load_dataset
from kcloud.models.local import LocalRunner


def test_held_out_accuracy_through_onnxruntime(digits) -> None:
    dataset = load_dataset(digits)
    outputs = LocalRunner(digits).run_all(dataset.inputs, batch_rows=128)
    top1 = dataset.score(outputs)
    print(f"\ndigits-cnn held-out top-1: {top1:.4f} on {len(dataset)} images")
    assert len(dataset) == 450
    assert top1 >= 0.95
    assert digits.config.accuracy is not None and digits.config.accuracy.metric == "top1"
    assert digits.config.accuracy.reference == pytest.approx(top1, abs=1e-9)
    # argmax of the probabilities and the `label` output agree
    probabilities = np.concatenate([o["probabilities"] for o in outputs])
    labels = np.concatenate([o["label"] for o in outputs])
    np.testing.assert_array_equal(probabilities.argmax(axis=1), labels)


def test_held_out_split_is_stratified_and_on_pixel_scale(digits) -> None:
    dataset = load_dataset(digits)
    counts = np.bincount(dataset.references, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # 25% of each class's ~180 images
    images = np.concatenate([s["image"] for s in dataset.inputs])
    assert images.dtype == np.float32 and images.min() == 0.0 and images.max() == 16.0


def test_onnx_equals_the_numpy_forward_pass(digits) -> None:
    model = onnx.load(str(digits.weights_path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    net = digits_builder.Net(np.random.default_rng(0))
    net.params = {k: weights[k] for k in net.params}
    split = digits_builder.load_split()
    [out] = LocalRunner(digits).run([{"image": split.test_x[:100]}])
    np.testing.assert_allclose(out["probabilities"], net.predict_proba(split.test_x[:100]), atol=1e-5)
    assert {n.op_type for n in model.graph.node} == {
        "Div",
        "Conv",
        "Relu",
        "MaxPool",
        "Reshape",
        "Gemm",
        "Softmax",
        "ArgMax",
    }


def test_flops_and_weights(digits) -> None:
    conv1 = 2 * (8 * 8 * 8) * 9
    conv2 = 2 * (16 * 4 * 4) * (8 * 9)
    dense = 2 * 10 * 256
    assert digits.config.flops_per_sample == conv1 + conv2 + dense
    parameters = 8 * 9 + 8 + 16 * 72 + 16 + 10 * 256 + 10
    assert digits.config.memory_bytes == 4 * (parameters + 1) + 8 * 2  # + pixel scale + reshape target


def test_numpy_gradients_match_finite_differences() -> None:
    """The training code's backward pass is what makes the accuracy real; check it numerically."""
    split = digits_builder.load_split()
    net = digits_builder.Net(np.random.default_rng(3))
    for key in net.params:
        net.params[key] = net.params[key].astype(np.float64)
    x, y = split.train_x[:6].astype(np.float64), split.train_y[:6]
    _, grads = net.gradients(x, y)
    for key in ("w1", "b2", "w3"):
        index = tuple(np.unravel_index(5, net.params[key].shape))
        original = net.params[key][index]
        net.params[key][index] = original + 1e-5
        plus, _ = net.gradients(x, y)
        net.params[key][index] = original - 1e-5
        minus, _ = net.gradients(x, y)
        net.params[key][index] = original
        assert grads[key][index] == pytest.approx((plus - minus) / 2e-5, rel=1e-3, abs=1e-7), key
