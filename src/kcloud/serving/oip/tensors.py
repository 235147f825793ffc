"""Tensor data both ways: JSON `data` and Triton binary tensor data <-> numpy arrays.

Shared by the server side (request inputs, response outputs) and the client side, because a
request input and a response output are the same JSON shape: name, datatype, shape, and either
`data` or `parameters.binary_data_size` with the bytes after the JSON header.

Speed: orjson parses and writes the JSON; numeric JSON data is checked with one `set(map(type,
...))` pass (C speed) and converted with one `np.array` call; binary data is `np.frombuffer`
over the body without a copy (the arrays are then read-only views of the body).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from kcloud.datatypes import DATATYPE_TO_NUMPY, FLOAT_DATATYPES, INTEGER_DATATYPES
from kcloud.serving.oip.errors import CodecError

INFERENCE_HEADER_CONTENT_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

_U32 = struct.Struct("<I")
_MAX_DIM = 2**63 - 1  # numpy sizes are signed 64-bit; the protocol allows uint64 but no array is that big
#: The most dimensions a numpy array may have (NPY_MAXDIMS); a longer shape could only fail later, as a 500.
MAX_RANK = 64

# Which Python types orjson produces that each datatype accepts in JSON `data`. `bool` is its own
# type (type(True) is not int), so `true` in an INT32 tensor or `1` in a BOOL tensor is refused.
_JSON_ELEMENT_TYPES: dict[str, frozenset[type]] = {
    **{name: frozenset((int,)) for name in INTEGER_DATATYPES},
    **{name: frozenset((int, float)) for name in FLOAT_DATATYPES},
    "BOOL": frozenset((bool,)),
    "BYTES": frozenset((str,)),
}
_JSON_ELEMENT_WORDS: dict[str, str] = {
    **{name: "integers" for name in INTEGER_DATATYPES},
    **{name: "numbers" for name in FLOAT_DATATYPES},
    "BOOL": "true or false",
    "BYTES": "strings",
}


def json_kind(value: object) -> str:
    """How a JSON value reads in an error message: 'a string ("abc")', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({orjson.dumps(shown).decode()})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_header_length(value: str | None) -> int | None:
    """`Inference-Header-Content-Length` header value -> int, or None when the header is absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise CodecError(f"{INFERENCE_HEADER_CONTENT_LENGTH} must be a non-negative integer, got {value!r}")
    return int(text)


class BinarySection:
    """The bytes after the JSON header, handed out in the order the tensors are listed.

    The binary tensor data extension puts each binary tensor's bytes after the JSON "in the same
    order as the order of the input or output tensors are specified in the JSON".
    """

    __slots__ = ("body", "end", "has_header", "pos", "start")

    def __init__(self, body: bytes, start: int, has_header: bool) -> None:
        self.body = body
        self.start = start
        self.pos = start
        self.end = len(body)
        self.has_header = has_header

    def take(self, size: int, where: str) -> int:
        """Reserve `size` bytes for one tensor; returns their offset in the body."""
        if not self.has_header:
            raise CodecError(
                f"{where} has parameters.binary_data_size but the message has no "
                f"{INFERENCE_HEADER_CONTENT_LENGTH} header, so there is no binary data"
            )
        left = self.end - self.pos
        if size > left:
            raise CodecError(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"(only {left} bytes of binary data left)"
            )
        offset = self.pos
        self.pos += size
        return offset

    def finish(self) -> None:
        """All binary bytes must belong to some tensor: leftovers mean the sizes don't add up."""
        if self.pos != self.end:
            declared = self.pos - self.start
            total = self.end - self.start
            raise CodecError(
                f"the body has {total} bytes after the JSON header but the tensors' binary_data_size "
                f"values add up to {declared}"
            )


def open_body(body: bytes, header_length: int | None) -> tuple[Any, BinarySection]:
    """Parse the JSON header of a body; return it and the binary section that follows."""
    if not isinstance(body, bytes):
        body = bytes(body)
    if header_length is None:
        header: bytes | memoryview = body
        start = len(body)
    else:
        if header_length < 0 or header_length > len(body):
            raise CodecError(
                f"{INFERENCE_HEADER_CONTENT_LENGTH} is {header_length} but the body has only "
                f"{len(body)} bytes"
            )
        header = memoryview(body)[:header_length]
        start = header_length
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        hint = ""
        if header_length is None and ("after document" in str(e) or "trailing" in str(e).lower()):
            hint = f" (binary tensor data needs the {INFERENCE_HEADER_CONTENT_LENGTH} header)"
        raise CodecError(f"malformed JSON in the inference header: {e}{hint}") from None
    return doc, BinarySection(body, start, header_length is not None)


def parameters_of(entry: dict, where: str) -> dict:
    """The optional `parameters` object of a message or tensor ({} when absent)."""
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise CodecError(f"{where}: 'parameters' must be a JSON object, got {json_kind(params)}")
    if "shared_memory_region" in params:
        raise CodecError(f"{where}: the shared-memory extension is not supported; send the data inline")
    return params


def decode_tensor(
    entry: object, index: int, role: str, section: BinarySection, *, max_count: int | None = None,
    limit: str = "",
) -> tuple[str, str, np.ndarray]:
    """One `$request_input` / `$response_output` -> (name, datatype, array of its shape).

    `max_count` refuses a tensor of more elements before any of them is read; `limit` says
    where that bound comes from, for the message.
    """
    if not isinstance(entry, dict):
        raise CodecError(f"{role}s[{index}] must be a JSON object, got {json_kind(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CodecError(f"{role}s[{index}] needs a 'name' (a non-empty string), got {json_kind(name)}")
    where = f"{role} '{name}'"

    datatype = entry.get("datatype")
    if datatype is None:
        raise CodecError(f"{where} has no 'datatype'")
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_NUMPY:
        known = ", ".join(DATATYPE_TO_NUMPY)
        shown = datatype if isinstance(datatype, str) else json_kind(datatype)
        raise CodecError(f"{where}: unknown datatype {shown!r}; the protocol's datatypes are {known}")

    shape = entry.get("shape")
    if shape is None:
        raise CodecError(f"{where} has no 'shape'")
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise CodecError(f"{where}: 'shape' must be an array of integers, got {orjson.dumps(shape).decode()}")
    if len(shape) > MAX_RANK:
        raise CodecError(f"{where}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported")
    if any(d < 0 or d > _MAX_DIM for d in shape):
        raise CodecError(
            f"{where}: shape {shape} has a dimension out of range; every dimension must be a "
            "non-negative integer (a request gives actual sizes, not -1)"
        )
    count = math.prod(shape)
    if max_count is not None and count > max_count:
        raise CodecError(
            f"{where}: shape {shape} carries {count} elements, more than the model takes in one request "
            f"({limit or f'at most {max_count} elements left for this input'}); split the request"
        )

    params = parameters_of(entry, where)
    size = params.get("binary_data_size")
    has_data = "data" in entry
    if size is not None:
        if type(size) is not int or size < 0:
            raise CodecError(
                f"{where}: binary_data_size must be a non-negative integer, got {json_kind(size)}"
            )
        if has_data:
            raise CodecError(f"{where} has both 'data' and parameters.binary_data_size; give one of them")
        array = array_from_binary(section, size, datatype, shape, count, where)
    elif has_data:
        array = array_from_json(entry["data"], datatype, shape, count, where)
    else:
        raise CodecError(f"{where} has neither 'data' nor parameters.binary_data_size")
    return name, datatype, array


def array_from_json(data: object, datatype: str, shape: list[int], count: int, where: str) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) -> array; checks every element's JSON type."""
    if not isinstance(data, list):
        raise CodecError(f"{where}: 'data' must be a JSON array, got {json_kind(data)}")
    leaves: list = data
    kinds = set(map(type, data))
    if list in kinds:
        leaves, kinds = _flatten_nested(data, kinds, where)
    if len(leaves) != count:
        raise CodecError(f"{where}: shape {shape} needs {count} elements but 'data' has {len(leaves)}")
    allowed = _JSON_ELEMENT_TYPES[datatype]
    if not kinds <= allowed:
        index, bad = next((i, v) for i, v in enumerate(leaves) if type(v) not in allowed)
        raise CodecError(
            f"{where}: element {index} of 'data' is {json_kind(bad)}, "
            f"but {datatype} takes {_JSON_ELEMENT_WORDS[datatype]}"
        )

    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [s.encode() for s in leaves]  # orjson strings are valid UTF-8, so encode never fails
    elif datatype in INTEGER_DATATYPES:
        if leaves:
            info = np.iinfo(dtype)
            low, high = min(leaves), max(leaves)
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise CodecError(
                    f"{where}: value {bad} is out of range for {datatype} ({info.min}..{info.max})"
                )
        array = np.array(leaves, dtype=dtype)
    elif datatype in FLOAT_DATATYPES:
        with np.errstate(over="ignore"):
            array = np.array(leaves, dtype=dtype)
        if datatype != "FP64" and not np.isfinite(array).all():
            index = int(np.argmin(np.isfinite(array)))
            limit = float(np.finfo(dtype).max)
            raise CodecError(f"{where}: value {leaves[index]!r} is out of range for {datatype} (±{limit:g})")
    else:  # BOOL
        array = np.array(leaves, dtype=dtype)
    return array.reshape(shape)


def _flatten_nested(data: list, kinds: set[type], where: str) -> tuple[list, set[type]]:
    """Nested `data` -> its leaves in row-major order; refuses ragged nesting."""
    if len(kinds) != 1:
        raise CodecError(f"{where}: nested 'data' mixes arrays and values at the same level")
    try:
        nested = np.array(data, dtype=object)
    except ValueError as e:  # e.g. more than numpy's 64 dimensions
        raise CodecError(f"{where}: nested 'data' cannot be read as a tensor: {e}") from None
    leaves = nested.ravel().tolist()
    kinds = set(map(type, leaves))
    if list in kinds:
        raise CodecError(f"{where}: nested 'data' is ragged; every row must have the same length")
    return leaves, kinds


def array_from_binary(
    section: BinarySection, size: int, datatype: str, shape: list[int], count: int, where: str
) -> np.ndarray:
    """`binary_data_size` bytes of the body -> array (a read-only view where the layout allows)."""
    offset = section.take(size, where)
    body = section.body
    if datatype == "BYTES":
        return _bytes_elements(body, offset, size, count, where).reshape(shape)
    dtype = DATATYPE_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if size != expected:
        raise CodecError(
            f"{where}: binary_data_size is {size} but shape {shape} of {datatype} needs {expected} bytes"
        )
    if count == 0:
        return np.empty(shape, dtype=dtype)
    if datatype == "BOOL":
        raw = np.frombuffer(body, dtype=np.uint8, count=count, offset=offset)
        if raw.max() > 1:
            index = int(np.argmax(raw > 1))
            raise CodecError(
                f"{where}: BOOL element {index} is byte {int(raw[index])}; binary BOOL is one byte, 0 or 1"
            )
        array = raw.view(np.bool_)
    else:
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if not array.flags.aligned:  # the JSON header has any length; C consumers want aligned data
        array = array.copy()
    return array.reshape(shape)


def _bytes_elements(body: bytes, offset: int, size: int, count: int, where: str) -> np.ndarray:
    """Binary BYTES: each element is a 4-byte little-endian length and then that many bytes."""
    end = offset + size
    pos = offset
    elements = []
    unpack = _U32.unpack_from
    for index in range(count):
        if pos + 4 > end:
            raise CodecError(
                f"{where}: binary BYTES data ends before element {index} of {count} "
                "(each element is a 4-byte little-endian length, then the bytes)"
            )
        (length,) = unpack(body, pos)
        pos += 4
        if pos + length > end:
            raise CodecError(
                f"{where}: BYTES element {index} declares {length} bytes but only {end - pos} are left"
            )
        elements.append(body[pos : pos + length])
        pos += length
    if pos != end:
        raise CodecError(
            f"{where}: binary BYTES data has {end - pos} bytes left over after its {count} elements"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def bytes_elements_of(array: np.ndarray) -> list[bytes]:
    """The elements of a BYTES tensor as `bytes`, row-major; `str` elements become UTF-8.

    Raises `TypeError` for an element that is neither bytes nor str.
    """
    out = array.ravel().tolist()
    for index, element in enumerate(out):
        if isinstance(element, bytes):
            continue
        if isinstance(element, str):
            out[index] = element.encode()
        else:
            raise TypeError(
                f"BYTES element {index} is {type(element).__name__}; BYTES elements must be bytes or str"
            )
    return out


def binary_data(array: np.ndarray, datatype: str) -> bytes:
    """An array as Triton binary tensor data: little-endian, row-major, no padding."""
    if datatype == "BYTES":
        parts = []
        for element in bytes_elements_of(array):
            if len(element) >= 2**32:
                raise TypeError("a BYTES element is longer than the protocol's 4 GiB limit")
            parts.append(_U32.pack(len(element)))
            parts.append(element)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPE_TO_NUMPY[datatype]).tobytes()


def json_data(array: np.ndarray, datatype: str) -> np.ndarray | list[str] | None:
    """An array as JSON `data` (flat, row-major), or None when JSON cannot carry it exactly.

    Numbers come back as a flat contiguous array for orjson's OPT_SERIALIZE_NUMPY; BYTES as a list
    of str. None means: NaN or infinity (no JSON number for them) or BYTES that are not UTF-8.
    """
    if datatype == "BYTES":
        try:
            return [element.decode() for element in bytes_elements_of(array)]
        except UnicodeDecodeError:
            return None
    flat = np.ascontiguousarray(array, dtype=DATATYPE_TO_NUMPY[datatype]).reshape(-1)
    if datatype in FLOAT_DATATYPES and not np.isfinite(flat).all():
        return None
    return flat


def dump_json(doc: dict) -> bytes:
    """orjson with numpy arrays written as JSON arrays."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def message_headers(header_length: int, has_binary: bool) -> dict[str, str]:
    """HTTP headers of a body: plain JSON, or JSON + binary with the header-length header."""
    if has_binary:
        return {
            "Content-Type": BINARY_CONTENT_TYPE,
            INFERENCE_HEADER_CONTENT_LENGTH: str(header_length),
        }
    return {"Content-Type": JSON_CONTENT_TYPE}
