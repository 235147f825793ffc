"""ONNX element types in Open Inference Protocol names (their numpy dtypes: `kcloud.datatypes`).

The gateway speaks OIP names (`FP32`, `BYTES`), the runtime numpy, the model files ONNX; each
mapping lives in one table, so a datatype is never translated two different ways.
"""

from __future__ import annotations

from onnx import TensorProto

#: ONNX TensorProto element type -> OIP datatype (ONNX STRING is OIP BYTES).
ONNX_TO_OIP: dict[int, str] = {
    TensorProto.BOOL: "BOOL",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}

