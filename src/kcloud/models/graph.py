"""What an ONNX file offers: its signature, its weight size and its FLOPs per sample.

The repository checks each `config.toml` against the graph it describes, so a wrong name,
datatype or rank is caught when the model is added or loaded, not by the first request.
Parsing a 90 MB graph takes a third of a second, so the signature is cached beside the file
(`graph-signature.json`, keyed by the file's SHA-256) and in memory (keyed by size and mtime).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from kcloud.models.config import ModelConfig, TensorSpec
from kcloud.models.datatypes import ONNX_TO_OIP
from kcloud.models.errors import ModelFileError

SIGNATURE_CACHE = "graph-signature.json"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class GraphTensor:
    name: str
    #: OIP datatype, `None` where OIP has no name for the ONNX element type (e.g. bfloat16).
    datatype: str | None
    #: -1 for a symbolic or unknown dimension.
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    weights_bytes: int


_sha_cache: dict[tuple[str, int, int], str] = {}
_signature_cache: dict[tuple[str, int, int], GraphSignature] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for the life of the process."""
    key = _stat_key(path)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def load_onnx(path: Path) -> onnx.ModelProto:
    """Parse and check an ONNX file; anything else is a `ModelFileError` naming the file."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.ir_version or not model.graph.output:
        raise ModelFileError(f"{path}: not an ONNX model (no IR version or no graph outputs)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: invalid ONNX model: {first_line}") from None
    return model


def _tensor(value: onnx.ValueInfoProto, path: Path) -> GraphTensor:
    if not value.type.HasField("tensor_type"):
        raise ModelFileError(
            f"{path}: graph input/output `{value.name}` is not a tensor; only tensors are served"
        )
    tensor_type = value.type.tensor_type
    shape: list[int] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            shape.append(dim.dim_value if dim.HasField("dim_value") else -1)
    else:
        raise ModelFileError(f"{path}: graph tensor `{value.name}` has no declared shape (rank unknown)")
    return GraphTensor(value.name, ONNX_TO_OIP.get(tensor_type.elem_type), tuple(shape))


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (its weights)."""
    total = 0
    for init in model.graph.initializer:
        count = math.prod(init.dims)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += count * itemsize
    return total


def signature_of(model: onnx.ModelProto, path: Path) -> GraphSignature:
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor(v, path) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v, path) for v in model.graph.output)
    return GraphSignature(inputs, outputs, weights_bytes(model))


def _read_cache(cache: Path, sha: str) -> GraphSignature | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("format") != _CACHE_FORMAT or data.get("sha256") != sha:
            return None
        return GraphSignature(
            inputs=tuple(GraphTensor(t["name"], t["datatype"], tuple(t["shape"])) for t in data["inputs"]),
            outputs=tuple(GraphTensor(t["name"], t["datatype"], tuple(t["shape"])) for t in data["outputs"]),
            weights_bytes=int(data["weights_bytes"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache: Path, sha: str, signature: GraphSignature) -> None:
    data = {"format": _CACHE_FORMAT, "sha256": sha, **asdict(signature)}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:  # a read-only repository still works, only slower
        tmp.unlink(missing_ok=True)


def read_signature(path: Path) -> GraphSignature:
    """The signature of `path`, from memory, the sidecar cache, or by parsing the graph."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    key = _stat_key(path)
    if key in _signature_cache:
        return _signature_cache[key]
    sha = file_sha256(path)
    cache = path.with_name(SIGNATURE_CACHE)
    signature = _read_cache(cache, sha)
    if signature is None:
        signature = signature_of(load_onnx(path), path)
        _write_cache(cache, sha, signature)
    _signature_cache[key] = signature
    return signature


def tensor_specs(tensors: tuple[GraphTensor, ...], path: Path) -> list[TensorSpec]:
    """Config tensors inferred from graph tensors (for `add` without a config)."""
    specs = []
    for tensor in tensors:
        if tensor.datatype is None:
            raise ModelFileError(f"{path}: tensor `{tensor.name}` has an element type that OIP cannot carry")
        if any(d == 0 for d in tensor.shape):
            raise ModelFileError(f"{path}: tensor `{tensor.name}` has a zero dimension {list(tensor.shape)}")
        specs.append(TensorSpec(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)))
    return specs


def _compare(kind: str, spec: TensorSpec, tensor: GraphTensor) -> list[str]:
    problems = []
    if spec.datatype != tensor.datatype:
        problems.append(
            f"{kind} `{spec.name}`: config datatype {spec.datatype}, "
            f"graph has {tensor.datatype or 'unsupported'}"
        )
    if len(spec.shape) != len(tensor.shape):
        problems.append(
            f"{kind} `{spec.name}`: config rank {len(spec.shape)} {spec.shape}, "
            f"graph rank {len(tensor.shape)} {list(tensor.shape)}"
        )
        return problems
    for axis, (want, have) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
        if have != -1 and want != have:
            problems.append(
                f"{kind} `{spec.name}`: dimension {axis} is {want} in the config "
                f"but fixed to {have} in the graph"
            )
    return problems


def check_signature(config: ModelConfig, signature: GraphSignature, path: Path) -> None:
    """Raise `ModelFileError` listing every way the config's signature disagrees with the graph.

    For processing kind `none` the public tensors are the graph's: inputs must match exactly
    (names, datatypes, ranks, fixed dimensions); outputs must exist in the graph (a model may
    choose to publish only some). A text model's public BYTES input is tokenised first, so only
    its graph inputs and its output are checked.
    """
    problems: list[str] = []
    graph_inputs = {t.name: t for t in signature.inputs}
    graph_outputs = {t.name: t for t in signature.outputs}
    if config.processing.kind == "none":
        for spec in config.inputs:
            if spec.name not in graph_inputs:
                problems.append(
                    f"input `{spec.name}` is not a graph input (graph inputs: {sorted(graph_inputs)})"
                )
            else:
                problems += _compare("input", spec, graph_inputs[spec.name])
        missing = sorted(set(graph_inputs) - {s.name for s in config.inputs})
        if missing:
            problems.append(f"graph inputs {missing} are not in the config")
    elif config.processing.kind == "sentence-embedding":
        needed = {"input_ids", "attention_mask"}
        allowed = needed | {"token_type_ids"}
        if not needed <= set(graph_inputs) or not set(graph_inputs) <= allowed:
            problems.append(
                f"a sentence-embedding graph must take input_ids and attention_mask (optionally "
                f"token_type_ids), this one takes {sorted(graph_inputs)}"
            )
        for name in sorted(needed & set(graph_inputs)):
            if graph_inputs[name].datatype != "INT64" or len(graph_inputs[name].shape) != 2:
                problems.append(f"graph input `{name}` must be INT64 [batch, sequence]")
    for spec in config.outputs:
        if spec.name not in graph_outputs:
            problems.append(
                f"output `{spec.name}` is not a graph output (graph outputs: {sorted(graph_outputs)})"
            )
        else:
            problems += _compare("output", spec, graph_outputs[spec.name])
    if config.batching.max_batch_size > 0:
        for spec in (*config.inputs, *config.outputs):
            if not spec.shape or spec.shape[0] != -1:
                problems.append(
                    f"`{spec.name}` needs a leading -1 batch dimension because batching.max_batch_size > 0 "
                    f"(shape {spec.shape}); set max_batch_size = 0 for a model without a batch dimension"
                )
    if problems:
        raise ModelFileError(f"{path}: config does not match the graph:\n  " + "\n  ".join(problems))


def count_flops(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> float | None:
    """FLOPs of one sample: 2 x the multiply-accumulates of every MatMul, Gemm and Conv.

    Graph inputs get the batch dimension (axis 0) set to 1 and symbolic dimensions named in
    `dims` (e.g. `{"sequence": 32}`) set to those values; shapes then follow from ONNX shape
    inference. Other operators (and subgraphs) are not counted. `None` when some counted
    operator's shape stays unknown, rather than a partial total.
    """
    dims = dims or {}
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    for value in graph.input:
        shape = value.type.tensor_type.shape
        for axis, dim in enumerate(shape.dim):
            if dim.HasField("dim_value"):
                continue
            size = 1 if axis == 0 else dims.get(dim.dim_param)
            if size is None:
                return None
            dim.Clear()
            dim.dim_value = size
    probe = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            shapes[value.name] = None
            continue
        dim_values = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        shapes[value.name] = None if None in dim_values else tuple(dim_values)  # type: ignore[arg-type]
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)

    total = 0
    for node in inferred.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if a is None or b is None or y is None:
            return None
        if node.op_type == "MatMul":
            total += 2 * math.prod(y) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            total += 2 * math.prod(y) * (a[0] if trans_a else a[1])
        else:
            total += 2 * math.prod(y) * math.prod(b[1:])
    return float(total)
