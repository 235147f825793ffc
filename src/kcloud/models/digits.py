"""`digits-cnn`: a small CNN trained here, in numpy, on scikit-learn's handwritten digits.

No installable package ships a vision model together with a labelled data set that works
offline, so kcloud trains one at build time on data that ships inside scikit-learn (1,797
8x8 images, UCI "Optical Recognition of Handwritten Digits"). numpy only, so the default
install needs no torch; a fixed seed and a stratified split make the build repeatable.

    image [N,1,8,8] (pixels 0..16, sklearn's scale) -> /16 -> conv3x3(8) -> ReLU -> maxpool2
      -> conv3x3(16) -> ReLU -> flatten(256) -> dense(10) -> softmax = probabilities, argmax = label
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.errors import BuildError

SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 20
BATCH = 32
LEARNING_RATE = 3e-3
PIXEL_MAX = 16.0
OPSET = 17


@dataclass
class Split:
    train_x: np.ndarray  # float32 [N,1,8,8], 0..16
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray


def load_split() -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED
    )
    return Split(train_x, train_y, test_x, test_y)


def data_sha256() -> str:
    """Digest of the data file scikit-learn ships, part of the build cache key.

    Read from disk without importing scikit-learn (a second of imports), so that checking an
    up-to-date build stays fast.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("scikit-learn is not installed; install it with: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise BuildError(f"{path} is missing; reinstall scikit-learn")
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------- layers
def _im2col(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N*H*W, C*9] patches of a 3x3, stride-1, pad-1 convolution."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # [N,C,H,W,3,3]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def _col2im(cols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of `_im2col`: scatter-add patch gradients back onto the image."""
    n, c, h, w = shape
    patches = cols.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, c, h + 2, w + 2), dtype=cols.dtype)
    for dy in range(3):
        for dx in range(3):
            padded[:, :, dy : dy + h, dx : dx + w] += patches[:, :, :, :, dy, dx].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, w = x.shape
    cols = _im2col(x)
    out = cols @ weight.reshape(weight.shape[0], -1).T + bias
    return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), cols


def _maxpool(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


class Net:
    """The CNN's parameters and its forward/backward passes (float32)."""

    def __init__(self, rng: np.random.Generator) -> None:
        def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

        self.params: dict[str, np.ndarray] = {
            "w1": he((8, 1, 3, 3), 9),
            "b1": np.zeros(8, np.float32),
            "w2": he((16, 8, 3, 3), 72),
            "b2": np.zeros(16, np.float32),
            "w3": he((10, 256), 256),
            "b3": np.zeros(10, np.float32),
        }

    def forward(self, images: np.ndarray, keep: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.params
        x = images.astype(np.float32) / PIXEL_MAX
        z1, cols1 = _conv(x, p["w1"], p["b1"])
        a1 = np.maximum(z1, 0)
        m1 = _maxpool(a1)
        z2, cols2 = _conv(m1, p["w2"], p["b2"])
        a2 = np.maximum(z2, 0)
        flat = a2.reshape(len(a2), -1)
        logits = flat @ p["w3"].T + p["b3"]
        cache = (
            {"cols1": cols1, "z1": z1, "a1": a1, "m1": m1, "cols2": cols2, "z2": z2, "flat": flat}
            if keep
            else {}
        )
        return logits, cache

    def gradients(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        p = self.params
        logits, c = self.forward(images, keep=True)
        probs = softmax(logits)
        n = len(labels)
        loss = float(-np.log(probs[np.arange(n), labels] + 1e-12).mean())
        d_logits = probs
        d_logits[np.arange(n), labels] -= 1
        d_logits /= n
        grads = {"w3": d_logits.T @ c["flat"], "b3": d_logits.sum(0)}
        d_z2 = (d_logits @ p["w3"]).reshape(c["z2"].shape) * (c["z2"] > 0)
        d_z2_cols = d_z2.transpose(0, 2, 3, 1).reshape(-1, 16)
        grads["w2"] = (d_z2_cols.T @ c["cols2"]).reshape(p["w2"].shape)
        grads["b2"] = d_z2_cols.sum(0)
        d_m1 = _col2im(d_z2_cols @ p["w2"].reshape(16, -1), c["m1"].shape)
        a1 = c["a1"]
        upsampled = np.repeat(np.repeat(c["m1"], 2, axis=2), 2, axis=3)
        d_a1 = np.repeat(np.repeat(d_m1, 2, axis=2), 2, axis=3) * (a1 == upsampled)
        d_z1 = d_a1 * (c["z1"] > 0)
        d_z1_cols = d_z1.transpose(0, 2, 3, 1).reshape(-1, 8)
        grads["w1"] = (d_z1_cols.T @ c["cols1"]).reshape(p["w1"].shape)
        grads["b1"] = d_z1_cols.sum(0)
        return loss, grads

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.forward(images)[0])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def train(split: Split, epochs: int = EPOCHS) -> Net:
    """Adam on mini-batches, fixed seed.

    BLAS is held to one thread: these matrices are tiny, and a multi-threaded BLAS spends
    several times longer synchronising than computing (7 s against 2 s here on 2 cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _train(split, epochs)


def _train(split: Split, epochs: int) -> Net:
    rng = np.random.default_rng(SEED)
    net = Net(rng)
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in net.params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    for _ in range(epochs):
        order = rng.permutation(len(split.train_x))
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            _, grads = net.gradients(split.train_x[batch], split.train_y[batch])
            step += 1
            for key, grad in grads.items():
                m, v = moments[key]
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                net.params[key] -= (LEARNING_RATE * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
    return net


def to_onnx(net: Net) -> onnx.ModelProto:
    """The trained net as an opset-17 graph: `image` -> `probabilities`, `label`."""
    p = net.params
    inits = [
        numpy_helper.from_array(np.array(PIXEL_MAX, np.float32), "pixel_max"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
        *(
            numpy_helper.from_array(np.ascontiguousarray(p[k]), k)
            for k in ("w1", "b1", "w2", "b2", "w3", "b3")
        ),
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Div", ["image", "pixel_max"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w1", "b1"], ["z1"], **conv),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["z2"], **conv),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Reshape", ["a2", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "digits-cnn",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kcloud")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
