"""Every bad message the OIP codec can see -> CodecError whose message names the tensor and the fault."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from kcloud.serving.oip import (
    CodecError,
    InferRequest,
    RequestedOutput,
    check_requested_outputs,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    parse_header_length,
    utf8_strings,
)


def _x(**fields) -> dict:
    """An input named 'x' with the given fields (None removes one)."""
    entry = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


def _doc(*inputs: dict, **top) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **top})


def _fails(body: bytes, header_length: int | None, *fragments: str) -> str:
    with pytest.raises(CodecError) as caught:
        decode_infer_request(body, header_length)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


JSON_CASES = [
    # (id, body, fragments the message must contain)
    ("malformed-json", b'{"inputs": [', ["malformed JSON"]),
    ("not-utf8", b'{"inputs": "\xff"}', ["malformed JSON"]),
    ("empty-body", b"", ["malformed JSON"]),
    ("not-an-object", b"[1, 2]", ["must be a JSON object", "an array"]),
    ("no-inputs", b"{}", ["no 'inputs'"]),
    ("inputs-not-array", b'{"inputs": {"name": "x"}}', ["'inputs' must be a JSON array"]),
    ("empty-inputs", _doc(), ["'inputs' is empty"]),
    ("input-not-object", b'{"inputs": [5]}', ["inputs[0] must be a JSON object"]),
    ("missing-name", _doc(_x(name=None)), ["inputs[0] needs a 'name'"]),
    ("empty-name", _doc(_x(name="")), ["inputs[0] needs a 'name'"]),
    ("missing-datatype", _doc(_x(datatype=None)), ["input 'x' has no 'datatype'"]),
    ("unknown-datatype", _doc(_x(datatype="FLOAT32")), ["input 'x'", "unknown datatype 'FLOAT32'", "FP32"]),
    ("lowercase-datatype", _doc(_x(datatype="fp32")), ["input 'x'", "unknown datatype 'fp32'"]),
    ("datatype-not-string", _doc(_x(datatype=3)), ["input 'x'", "unknown datatype"]),
    ("datatype-array", _doc(_x(datatype=["FP32"])), ["input 'x'", "unknown datatype"]),
    ("missing-shape", _doc(_x(shape=None)), ["input 'x' has no 'shape'"]),
    ("shape-not-array", _doc(_x(shape=2)), ["input 'x'", "'shape' must be an array of integers"]),
    ("shape-string-dim", _doc(_x(shape=["2"])), ["input 'x'", "'shape' must be an array of integers"]),
    ("shape-float-dim", _doc(_x(shape=[2.0])), ["input 'x'", "'shape' must be an array of integers"]),
    ("shape-bool-dim", _doc(_x(shape=[True, 2])), ["input 'x'", "'shape' must be an array of integers"]),
    ("negative-dim", _doc(_x(shape=[-1, 2])), ["input 'x'", "shape [-1, 2]", "non-negative"]),
    ("no-data", _doc(_x(data=None)), ["input 'x' has neither 'data' nor parameters.binary_data_size"]),
    ("data-not-array", _doc(_x(data=1.0)), ["input 'x'", "'data' must be a JSON array"]),
    (
        "too-few-elements",
        _doc(_x(shape=[2, 2], data=[1, 2, 3])),
        ["input 'x'", "shape [2, 2] needs 4", "has 3"],
    ),
    ("too-many-elements", _doc(_x(shape=[1], data=[1, 2])), ["input 'x'", "needs 1 elements", "has 2"]),
    ("ragged", _doc(_x(shape=[3], data=[[1, 2], [3]])), ["input 'x'", "ragged"]),
    ("ragged-deep", _doc(_x(shape=[4], data=[[[1], [2]], [[3], [4, 5]]])), ["input 'x'", "ragged"]),
    ("mixed-nesting", _doc(_x(shape=[3], data=[[1, 2], 3])), ["input 'x'", "mixes arrays and values"]),
    (
        "string-in-fp32",
        _doc(_x(data=["1.0", 2.0])),
        ["input 'x'", "element 0", 'a string ("1.0")', "FP32 takes numbers"],
    ),
    ("null-in-fp32", _doc(_x(data=[1.0, None])), ["input 'x'", "element 1", "null"]),
    ("bool-in-fp32", _doc(_x(data=[1.0, True])), ["input 'x'", "element 1", "a boolean (true)"]),
    ("object-in-fp32", _doc(_x(data=[{}, 1.0])), ["input 'x'", "element 0", "an object"]),
    (
        "float-in-int32",
        _doc(_x(datatype="INT32", data=[1, 2.5])),
        ["input 'x'", "element 1", "INT32 takes integers"],
    ),
    (
        "bool-in-int8",
        _doc(_x(datatype="INT8", data=[False, 1])),
        ["input 'x'", "element 0", "INT8 takes integers"],
    ),
    (
        "int-in-bool",
        _doc(_x(datatype="BOOL", data=[True, 1])),
        ["input 'x'", "element 1", "BOOL takes true or false"],
    ),
    (
        "number-in-bytes",
        _doc(_x(datatype="BYTES", data=["a", 1])),
        ["input 'x'", "element 1", "BYTES takes strings"],
    ),
    (
        "nested-string-in-int",
        _doc(_x(datatype="INT64", shape=[2, 1], data=[[1], ["2"]])),
        ["input 'x'", "element 1"],
    ),
    (
        "int8-overflow",
        _doc(_x(datatype="INT8", data=[127, 128])),
        ["input 'x'", "128 is out of range for INT8"],
    ),
    (
        "int8-underflow",
        _doc(_x(datatype="INT8", data=[-129, 0])),
        ["input 'x'", "-129 is out of range for INT8"],
    ),
    (
        "uint8-negative",
        _doc(_x(datatype="UINT8", data=[-1, 0])),
        ["input 'x'", "-1 is out of range for UINT8"],
    ),
    (
        "uint8-overflow",
        _doc(_x(datatype="UINT8", data=[256, 0])),
        ["input 'x'", "256 is out of range for UINT8"],
    ),
    ("int16-overflow", _doc(_x(datatype="INT16", data=[40000, 0])), ["input 'x'", "out of range for INT16"]),
    (
        "uint32-overflow",
        _doc(_x(datatype="UINT32", data=[2**32, 0])),
        ["input 'x'", "out of range for UINT32"],
    ),
    ("int64-overflow", _doc(_x(datatype="INT64", data=[2**63, 0])), ["input 'x'", "out of range for INT64"]),
    ("uint64-negative", _doc(_x(datatype="UINT64", data=[-1, 0])), ["input 'x'", "out of range for UINT64"]),
    (
        "beyond-64-bits",
        b'{"inputs":[{"name":"x","datatype":"UINT64","shape":[1],"data":[18446744073709551616]}]}',
        ["input 'x'", "element 0", "UINT64 takes integers"],
    ),
    (
        "fp16-overflow",
        _doc(_x(datatype="FP16", data=[1.0, 70000.0])),
        ["input 'x'", "70000.0 is out of range for FP16"],
    ),
    ("fp32-overflow", _doc(_x(data=[1e39, 1.0])), ["input 'x'", "out of range for FP32"]),
    (
        "json-infinity",
        b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":[1e400]}]}',
        ["malformed JSON"],
    ),
    ("duplicate-input", _doc(_x(), _x()), ["input 'x' appears more than once"]),
    ("id-not-string", _doc(_x(), id=42), ["'id' must be a string"]),
    ("parameters-not-object", _doc(_x(), parameters=[1]), ["'parameters' must be a JSON object"]),
    (
        "input-parameters-not-object",
        _doc(_x(parameters="binary")),
        ["input 'x'", "'parameters' must be a JSON object"],
    ),
    (
        "binary-output-not-bool",
        _doc(_x(), parameters={"binary_data_output": "yes"}),
        ["binary_data_output must be true or false"],
    ),
    (
        "shared-memory",
        _doc(_x(data=None, parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8})),
        ["input 'x'", "shared-memory extension is not supported"],
    ),
    ("outputs-not-array", _doc(_x(), outputs={"name": "y"}), ["'outputs' must be a JSON array"]),
    ("output-not-object", _doc(_x(), outputs=["y"]), ["outputs[0] must be a JSON object"]),
    ("output-without-name", _doc(_x(), outputs=[{"parameters": {}}]), ["outputs[0] needs a 'name'"]),
    (
        "duplicate-output",
        _doc(_x(), outputs=[{"name": "y"}, {"name": "y"}]),
        ["requested output 'y' appears more than once"],
    ),
    (
        "output-binary-not-bool",
        _doc(_x(), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
        ["requested output 'y'", "binary_data must be true or false"],
    ),
    (
        "classification",
        _doc(_x(), outputs=[{"name": "y", "parameters": {"classification": 3}}]),
        ["requested output 'y'", "classification extension is not supported"],
    ),
]


@pytest.mark.parametrize(("body", "fragments"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_bad_json_requests(body: bytes, fragments: list[str]) -> None:
    _fails(body, None, *fragments)


def test_too_deep_nesting_is_refused_not_crashed() -> None:
    data: object = [1.0]
    for _ in range(70):
        data = [data]
    _fails(_doc(_x(shape=[1], data=data)), None, "input 'x'")


def _binary(entries: list[dict], payload: bytes) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": entries})
    return header + payload, len(header)


def _bin_x(size: int, datatype: str = "FP32", shape: list[int] | None = None) -> dict:
    return {
        "name": "x",
        "datatype": datatype,
        "shape": shape or [2],
        "parameters": {"binary_data_size": size},
    }


def test_header_length_beyond_the_body() -> None:
    body, _ = _binary([_bin_x(8)], b"\0" * 8)
    _fails(
        body, len(body) + 1, f"Inference-Header-Content-Length is {len(body) + 1}", f"only {len(body)} bytes"
    )


def test_negative_header_length() -> None:
    body, _ = _binary([_bin_x(8)], b"\0" * 8)
    _fails(body, -1, "Inference-Header-Content-Length is -1")


def test_header_length_cutting_the_json_short() -> None:
    body, header_length = _binary([_bin_x(8)], b"\0" * 8)
    _fails(body, header_length - 3, "malformed JSON")


def test_binary_input_without_the_header() -> None:
    body, _ = _binary([_bin_x(8)], b"")
    _fails(body, None, "input 'x' has parameters.binary_data_size", "no Inference-Header-Content-Length")


def test_json_followed_by_bytes_without_the_header_gets_a_hint() -> None:
    body, _ = _binary([_bin_x(8)], b"\0" * 8)
    _fails(body, None, "malformed JSON", "needs the Inference-Header-Content-Length header")


def test_binary_size_past_the_end_of_the_body() -> None:
    body, header_length = _binary([_bin_x(8)], b"\0" * 4)
    _fails(body, header_length, "input 'x'", "binary_data_size 8 runs past the end", "only 4 bytes")


def test_binary_bytes_left_over() -> None:
    body, header_length = _binary([_bin_x(8)], b"\0" * 12)
    _fails(body, header_length, "12 bytes after the JSON header", "add up to 8")


def test_binary_bytes_present_but_no_binary_input() -> None:
    body, header_length = _binary([_x()], b"\0" * 3)
    _fails(body, header_length, "3 bytes after the JSON header", "add up to 0")


def test_binary_size_does_not_match_shape_and_datatype() -> None:
    body, header_length = _binary([_bin_x(4)], b"\0" * 4)
    _fails(body, header_length, "input 'x'", "binary_data_size is 4", "shape [2] of FP32 needs 8 bytes")


@pytest.mark.parametrize("size", [-1, "8", 8.0, True])
def test_binary_size_not_a_count(size: object) -> None:
    body, header_length = _binary([_bin_x(size)], b"\0" * 8)  # type: ignore[arg-type]
    _fails(body, header_length, "input 'x'", "binary_data_size must be a non-negative integer")


def test_both_data_and_binary_size() -> None:
    entry = _bin_x(8)
    entry["data"] = [1.0, 2.0]
    body, header_length = _binary([entry], b"\0" * 8)
    _fails(body, header_length, "input 'x' has both 'data' and parameters.binary_data_size")


def test_binary_bool_must_be_zero_or_one() -> None:
    body, header_length = _binary([_bin_x(3, "BOOL", [3])], b"\x01\x00\x02")
    _fails(body, header_length, "input 'x'", "BOOL element 2 is byte 2")


def test_binary_bytes_element_longer_than_its_data() -> None:
    payload = (10).to_bytes(4, "little") + b"abc"
    body, header_length = _binary([_bin_x(len(payload), "BYTES", [1])], payload)
    _fails(body, header_length, "input 'x'", "BYTES element 0 declares 10 bytes but only 3 are left")


def test_binary_bytes_with_too_few_elements() -> None:
    payload = (1).to_bytes(4, "little") + b"a" + b"\x01\x00"
    body, header_length = _binary([_bin_x(len(payload), "BYTES", [2])], payload)
    _fails(body, header_length, "input 'x'", "ends before element 1 of 2")


def test_binary_bytes_with_too_many_elements() -> None:
    payload = (1).to_bytes(4, "little") + b"a" + (1).to_bytes(4, "little") + b"b"
    body, header_length = _binary([_bin_x(len(payload), "BYTES", [1])], payload)
    _fails(body, header_length, "input 'x'", "5 bytes left over after its 1 elements")


def test_binary_sizes_of_two_inputs_that_do_not_add_up() -> None:
    entries = [_bin_x(8), {**_bin_x(8), "name": "z"}]
    body, header_length = _binary(entries, b"\0" * 12)
    _fails(body, header_length, "input 'z'", "binary_data_size 8 runs past the end", "only 4 bytes")


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "", "١٢"])
def test_bad_header_length_header(value: str) -> None:
    with pytest.raises(CodecError, match="Inference-Header-Content-Length must be a non-negative integer"):
        parse_header_length(value)


def test_header_length_header_parses() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length(" 120 ") == 120


def _request(outputs: list[RequestedOutput] | None) -> InferRequest:
    return InferRequest(id=None, inputs={}, input_datatypes={}, outputs=outputs)


def test_unknown_requested_output_in_the_response() -> None:
    with pytest.raises(
        CodecError, match=r"requested output 'nope' is not an output of model 'm' \(its outputs: y\)"
    ):
        encode_infer_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs={"y": np.zeros(1, np.float32)},
            request=_request([RequestedOutput("nope", None)]),
        )


def test_unknown_requested_output_checked_before_compute() -> None:
    check_requested_outputs(_request(None), ["y"], "m")
    check_requested_outputs(_request([RequestedOutput("y", True)]), ["y"], "m")
    with pytest.raises(CodecError, match="requested output 'z' is not an output of model 'm'"):
        check_requested_outputs(_request([RequestedOutput("z", True)]), ["y"], "m")


def test_output_dtype_without_a_protocol_name_is_a_server_bug_not_a_codec_error() -> None:
    with pytest.raises(TypeError, match="complex"):
        encode_infer_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs={"y": np.zeros(1, np.complex64)},
            request=_request(None),
        )


def test_non_utf8_text_input_is_named() -> None:
    assert utf8_strings(np.array([b"ok", "안녕".encode()], dtype=object), "text") == ["ok", "안녕"]
    with pytest.raises(CodecError, match=r"input 'text': element 1 is not valid UTF-8 text"):
        utf8_strings(np.array([b"ok", b"\xc3\x28"], dtype=object), "text")


# Client side.


def test_client_needs_an_input() -> None:
    with pytest.raises(CodecError, match="at least one input"):
        encode_infer_request({})


def test_client_refuses_a_dtype_without_a_protocol_name() -> None:
    with pytest.raises(CodecError, match="input 'x': numpy dtype complex128"):
        encode_infer_request({"x": np.zeros(2, np.complex128)})


def test_client_refuses_non_bytes_objects_in_bytes_tensors() -> None:
    with pytest.raises(CodecError, match="input 'x': BYTES element 1 is int"):
        encode_infer_request({"x": np.array([b"a", 3], dtype=object)})


@pytest.mark.parametrize(
    "value", [np.array([1.0, np.nan], np.float32), np.array([b"\xff"], dtype=object)], ids=["nan", "non-utf8"]
)
def test_client_refuses_what_json_cannot_carry(value: np.ndarray) -> None:
    with pytest.raises(CodecError, match="input 'x' cannot be sent as JSON"):
        encode_infer_request({"x": value}, binary=False)
    body, headers = encode_infer_request({"x": value}, binary=True)  # binary carries it
    got = decode_infer_request(body, int(headers["Inference-Header-Content-Length"])).inputs["x"]
    assert got.tolist() == value.tolist() if value.dtype == object else got.tobytes() == value.tobytes()


def test_client_surfaces_the_server_error() -> None:
    with pytest.raises(CodecError, match="the server answered with an error: input 'x' is missing"):
        decode_infer_response(b'{"error": "input \'x\' is missing"}', None)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"model_name": "m"}', "'outputs' must be a JSON array"),
        (
            b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0]}]}',
            "output 'y': shape [2] needs 2 elements",
        ),
        (
            b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]},'
            b'{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]}',
            "output 'y' appears more than once",
        ),
    ],
)
def test_client_refuses_bad_responses(body: bytes, fragment: str) -> None:
    with pytest.raises(CodecError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode_infer_response(body, None)


# Mutation fuzzing: whatever the bytes, the codec answers with a CodecError or a result, never
# another exception (which the gateway would turn into a 500).

_JUNK = [None, True, 0, -1, 1.5, 2**63, 2**64 - 1, "", "FP32", "BYTES", [], [-1], [[1, 2], [3]], [None], {}]


def _mutate_json(doc: object, rng: np.random.Generator) -> object:
    node, parent, key = doc, None, None
    for _ in range(int(rng.integers(1, 6))):
        if isinstance(node, dict) and node:
            parent, key = node, list(node)[int(rng.integers(len(node)))]
        elif isinstance(node, list) and node:
            parent, key = node, int(rng.integers(len(node)))
        else:
            break
        node = parent[key]
    if parent is not None:
        if rng.random() < 0.7:
            parent[key] = _JUNK[int(rng.integers(len(_JUNK)))]
        else:
            del parent[key]
    return doc


def _mutate_bytes(body: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(body)
    for _ in range(int(rng.integers(1, 4))):
        where = int(rng.integers(len(out) + 1))
        choice = rng.random()
        if choice < 0.4 and where < len(out):
            out[where] = int(rng.integers(256))
        elif choice < 0.7:
            del out[where:]
        else:
            out.insert(where, int(rng.integers(256)))
    return bytes(out)


def _mutants(rng: np.random.Generator, body: bytes, header_length: int | None):
    header, rest = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    if rng.random() < 0.5:
        new_header = orjson.dumps(_mutate_json(orjson.loads(header), rng))
        return new_header + rest, (None if header_length is None else len(new_header))
    mutated = _mutate_bytes(body, rng)
    if rng.random() < 0.2:
        return mutated, int(rng.integers(-2, len(mutated) + 3))
    return mutated, header_length


def test_mutated_requests_only_ever_raise_codec_errors() -> None:
    rng = np.random.default_rng(20240601)
    inputs = {
        "a": np.arange(4, dtype=np.float32).reshape(2, 2),
        "b": np.array([b"hi", b"there"], dtype=object),
        "c": np.array([True, False]),
    }
    outcomes = {"ok": 0, "codec": 0}
    for case in range(3000):
        body, headers = encode_infer_request(
            inputs, binary=case % 2 == 0, outputs=["y"] if case % 3 else None
        )
        mutant, header_length = _mutants(
            rng, body, parse_header_length(headers.get("Inference-Header-Content-Length"))
        )
        try:
            request = decode_infer_request(mutant, header_length)
            encode_infer_response(
                model_name="m",
                model_version=None,
                request_id=request.id,
                outputs={"y": np.zeros(2, np.float32)},
                request=request,
            )
            outcomes["ok"] += 1
        except CodecError:
            outcomes["codec"] += 1
    assert outcomes["codec"] > 1000 and outcomes["ok"] > 100, outcomes


def test_mutated_responses_only_ever_raise_codec_errors() -> None:
    rng = np.random.default_rng(7)
    outputs = {"y": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.array([b"one", b"two"], dtype=object)}
    outcomes = {"ok": 0, "codec": 0}
    for case in range(2000):
        request = InferRequest(id="1", inputs={}, input_datatypes={}, binary_data_output=case % 2 == 0)
        body, headers = encode_infer_response(
            model_name="m", model_version="1", request_id="1", outputs=outputs, request=request
        )
        mutant, header_length = _mutants(
            rng, body, parse_header_length(headers.get("Inference-Header-Content-Length"))
        )
        try:
            decode_infer_response(mutant, header_length)
            outcomes["ok"] += 1
        except CodecError:
            outcomes["codec"] += 1
    assert outcomes["codec"] > 500 and outcomes["ok"] > 50, outcomes
