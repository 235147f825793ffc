"""Server side of the codec: inference request body -> `InferRequest`; outputs -> response body.

Follows KServe's Open Inference Protocol v2 (`docs/predict-api/v2/required_api.md`) and Triton's
binary tensor data extension (`docs/protocol/extension_binary_data.md`). The gateway owns the
HTTP routes; it hands us the raw body and the parsed `Inference-Header-Content-Length`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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
    parameters_of,
)


@dataclass
class RequestedOutput:
    """One entry of the request's `outputs`; `binary` None = not said -> follow binary_data_output."""

    name: str
    binary: bool | None


@dataclass
class InferRequest:
    """A decoded inference request. BYTES inputs are object arrays of `bytes`."""

    id: str | None
    inputs: dict[str, np.ndarray]
    input_datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None = None  # None = every output of the model
    binary_data_output: bool = False
    parameters: dict = field(default_factory=dict)


def decode_infer_request(
    body: bytes, header_length: int | None, *, max_elements: int | None = None, limit: str = ""
) -> InferRequest:
    """Decode and check one `$inference_request` body (JSON, optionally followed by binary data).

    `header_length` is the integer value of `Inference-Header-Content-Length` (see
    `parse_header_length`), or None for a pure-JSON body. `max_elements` (the model's
    `max_request_elements`) refuses a request whose shapes alone exceed what the model takes,
    before its data is read (`limit` names that bound in the message). Raises `CodecError` naming
    what is wrong.
    """
    doc, section = open_body(body, header_length)
    if not isinstance(doc, dict):
        raise CodecError(f"the inference request must be a JSON object, got {json_kind(doc)}")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise CodecError(f"'id' must be a string, got {json_kind(request_id)}")
    parameters = parameters_of(doc, "the request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise CodecError(
            f"parameters.binary_data_output must be true or false, got {json_kind(binary_output)}"
        )

    raw_inputs = doc.get("inputs")
    if raw_inputs is None:
        raise CodecError("the request has no 'inputs'")
    if not isinstance(raw_inputs, list):
        raise CodecError(f"'inputs' must be a JSON array, got {json_kind(raw_inputs)}")
    if not raw_inputs:
        raise CodecError("'inputs' is empty; the request must carry at least one input tensor")

    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    left = max_elements
    for index, entry in enumerate(raw_inputs):
        name, datatype, array = decode_tensor(entry, index, "input", section, max_count=left, limit=limit)
        if left is not None:
            left -= array.size
        if name in inputs:
            raise CodecError(f"input '{name}' appears more than once in 'inputs'")
        inputs[name] = array
        datatypes[name] = datatype
    section.finish()

    return InferRequest(
        id=request_id,
        inputs=inputs,
        input_datatypes=datatypes,
        outputs=_requested_outputs(doc.get("outputs")),
        binary_data_output=binary_output,
        parameters=parameters,
    )


def _requested_outputs(raw: object) -> list[RequestedOutput] | None:
    """The request's `outputs`; absent or [] means all outputs (the spec's default)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise CodecError(f"'outputs' must be a JSON array, got {json_kind(raw)}")
    if not raw:
        return None
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise CodecError(f"outputs[{index}] must be a JSON object, got {json_kind(entry)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise CodecError(f"outputs[{index}] needs a 'name' (a non-empty string), got {json_kind(name)}")
        where = f"requested output '{name}'"
        if name in seen:
            raise CodecError(f"{where} appears more than once in 'outputs'")
        seen.add(name)
        params = parameters_of(entry, where)
        if params.get("classification"):
            raise CodecError(f"{where}: the classification extension is not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise CodecError(
                f"{where}: parameters.binary_data must be true or false, got {json_kind(binary)}"
            )
        requested.append(RequestedOutput(name=name, binary=binary))
    return requested


def check_requested_outputs(request: InferRequest, available: Iterable[str], model_name: str) -> None:
    """Refuse an unknown requested output before any compute is spent (CodecError -> 400)."""
    if request.outputs is None:
        return
    names = set(available)
    for wanted in request.outputs:
        if wanted.name not in names:
            raise CodecError(_unknown_output_message(wanted.name, model_name, names))


def _unknown_output_message(name: str, model_name: str, available: Iterable[str]) -> str:
    listed = ", ".join(sorted(available)) or "none"
    return f"requested output '{name}' is not an output of model '{model_name}' (its outputs: {listed})"


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
) -> tuple[bytes, dict[str, str]]:
    """Build the `$inference_response` body and its HTTP headers.

    Applies the request's output selection (an unknown name -> CodecError) and chooses binary or
    JSON per output: `binary_data` on the requested output wins, else `binary_data_output`. An
    output that JSON cannot carry exactly (NaN/infinity, BYTES that are not UTF-8) is sent binary
    even when JSON was asked for, so no value is lost or mangled. An output dtype the protocol
    cannot name raises TypeError (a model bug, not the client's).
    """
    if request.outputs is None:
        selected = [(name, array, request.binary_data_output) for name, array in outputs.items()]
    else:
        selected = []
        for wanted in request.outputs:
            if wanted.name not in outputs:
                raise CodecError(_unknown_output_message(wanted.name, model_name, outputs))
            binary = request.binary_data_output if wanted.binary is None else wanted.binary
            selected.append((wanted.name, outputs[wanted.name], binary))

    entries: list[dict] = []
    chunks: list[bytes] = []
    for name, value, binary in selected:
        array = np.asarray(value)
        datatype = numpy_to_datatype(array.dtype)
        entry: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        data = None if binary else json_data(array, datatype)
        if data is None:
            raw = binary_data(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data
        entries.append(entry)

    doc: dict = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = dump_json(doc)
    headers = message_headers(len(header), bool(chunks))
    if chunks:
        return b"".join((header, *chunks)), headers
    return header, headers


def utf8_strings(array: np.ndarray, input_name: str) -> list[str]:
    """A BYTES input as str, for text models; non-UTF-8 bytes -> CodecError naming the element."""
    out: list[str] = []
    for index, element in enumerate(array.ravel().tolist()):
        if isinstance(element, str):
            out.append(element)
            continue
        try:
            out.append(element.decode())
        except UnicodeDecodeError as e:
            raise CodecError(
                f"input '{input_name}': element {index} is not valid UTF-8 text "
                f"({e.reason} at byte {e.start})"
            ) from None
    return out
