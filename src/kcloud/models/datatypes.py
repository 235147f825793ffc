"""One table between Open Inference Protocol datatypes, numpy dtypes and ONNX element types.

The gateway speaks OIP names (`FP32`, `BYTES`), the runtime numpy, the model files ONNX; keeping
the three in one table means a datatype is never translated two different ways.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

#: OIP datatype -> numpy dtype. BYTES travel as numpy object arrays of `bytes`.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

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


def oip_datatype(dtype: np.dtype) -> str | None:
    """The OIP name of a numpy dtype; `None` when OIP has no such type.

    Unicode (`<U`) and fixed bytes (`S`) arrays count as BYTES, as their elements are strings.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "U", "S"):
        return "BYTES"
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == dtype:
            return name
    return None
