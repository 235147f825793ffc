"""Open Inference Protocol v2 tensor datatypes and their numpy dtypes: the one table.

The gateway's codec, the model configs, the pipelines and the bench all name tensor types the
OIP way (`FP32`, `BYTES`); this module is the only place that maps them to numpy (the ONNX
element types are mapped in `kcloud.models.datatypes`). The table is the one in KServe's
`required_api.md` ("Tensor Data Types"). Binary tensor data is
little-endian (Triton's binary tensor data extension), so the fixed-size dtypes are spelled
little-endian explicitly; on the usual little-endian host they equal the native dtypes.
"""

from __future__ import annotations

import numpy as np

DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

INTEGER_DATATYPES = frozenset(name for name, dt in DATATYPE_TO_NUMPY.items() if dt.kind in "iu")
FLOAT_DATATYPES = frozenset(("FP16", "FP32", "FP64"))

_KIND_SIZE_TO_DATATYPE: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPE_TO_NUMPY.items() if name != "BYTES"
}


def numpy_to_datatype(dtype: object) -> str:
    """The protocol datatype of a numpy dtype.

    Object, `bytes_` ("S") and `str_` ("U") arrays are all BYTES: the codec writes their elements
    as UTF-8 byte strings. Raises `TypeError` for a dtype the protocol has no name for (complex,
    datetime, ...): on the server side that is a model bug, not the client's fault.
    """
    dt = np.dtype(dtype)  # type: ignore[call-overload]
    if dt.kind in "OSU":
        return "BYTES"
    name = _KIND_SIZE_TO_DATATYPE.get((dt.kind, dt.itemsize))
    if name is None:
        raise TypeError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


def oip_datatype(dtype: object) -> str | None:
    """`numpy_to_datatype`, but `None` for a dtype the protocol has no name for (a client's
    wrong datatype is reported, not raised as a bug)."""
    try:
        return numpy_to_datatype(dtype)
    except TypeError:
        return None
