"""Client side of the codec: arrays -> request body; response body -> arrays.

Used by `kcloud infer` and the benchmark's network client. It speaks the same wire format as
tritonclient's HTTP client, without tritonclient's per-element Python loops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kcloud.datatypes import numpy_to_datatype
from kcloud.serving.oip.errors import CodecError
from kcloud.serving.oip.tensors import (
    binary_data,
    decode_tensor,
    dump_json,
    json_data,
    json_kind,
    message_headers,
    open_body,
)


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Build an `$inference_request` body and its HTTP headers.

    `binary` sends every input as binary tensor data (else as JSON `data`); `outputs` names the
    outputs wanted (None = all) and `binary_outputs` asks for them as binary data. Inputs that
    JSON cannot carry exactly (NaN/infinity, non-UTF-8 BYTES) raise CodecError when `binary` is
    False. A str array (or an object array of str) is sent as BYTES in UTF-8.
    """
    if not inputs:
        raise CodecError("an inference request needs at least one input")
    entries: list[dict] = []
    chunks: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        try:
            datatype = numpy_to_datatype(array.dtype)
            entry: dict = {"name": name, "shape": list(array.shape), "datatype": datatype}
            if binary:
                raw = binary_data(array, datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                data = json_data(array, datatype)
                if data is None:
                    raise CodecError(
                        f"input '{name}' cannot be sent as JSON (NaN/infinity or non-UTF-8 bytes); "
                        "send it as binary data"
                    )
                entry["data"] = data
        except TypeError as e:
            raise CodecError(f"input '{name}': {e}") from None
        entries.append(entry)

    doc: dict = {}
    if request_id is not None:
        doc["id"] = request_id
    doc["inputs"] = entries
    if outputs is None:
        doc["parameters"] = {"binary_data_output": binary_outputs}
    else:
        doc["outputs"] = [{"name": name, "parameters": {"binary_data": binary_outputs}} for name in outputs]
    header = dump_json(doc)
    headers = message_headers(len(header), bool(chunks))
    if chunks:
        return b"".join((header, *chunks)), headers
    return header, headers


def decode_infer_response(body: bytes, header_length: int | None) -> tuple[dict[str, np.ndarray], dict]:
    """Decode an `$inference_response` body -> (outputs by name, the response JSON).

    BYTES outputs come back as object arrays of `bytes`, whether the server sent them as JSON
    strings or binary. An `{"error": ...}` body raises CodecError carrying the server's message.
    """
    doc, section = open_body(body, header_length)
    if not isinstance(doc, dict):
        raise CodecError(f"the inference response must be a JSON object, got {json_kind(doc)}")
    if "error" in doc and "outputs" not in doc:
        raise CodecError(f"the server answered with an error: {doc['error']}")
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise CodecError(f"the response's 'outputs' must be a JSON array, got {json_kind(raw_outputs)}")
    arrays: dict[str, np.ndarray] = {}
    for index, entry in enumerate(raw_outputs):
        name, _datatype, array = decode_tensor(entry, index, "output", section)
        if name in arrays:
            raise CodecError(f"output '{name}' appears more than once in the response")
        arrays[name] = array
    section.finish()
    return arrays, doc
