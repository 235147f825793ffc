"""Round trips of the OIP v2 codec, every datatype, JSON (flat and nested) and binary, both directions."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from kcloud.serving.oip import (
    DATATYPE_TO_NUMPY,
    INFERENCE_HEADER_CONTENT_LENGTH,
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    numpy_to_datatype,
    parse_header_length,
)


def _sample(datatype: str) -> np.ndarray:
    """A 2x3 tensor per datatype, with each integer type's extremes in it."""
    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        values = [b"hello", b"", "한국어 문장".encode(), b"tab\there", b'quote"s', b"\\back"]
        return np.array(values, dtype=object).reshape(2, 3)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    if datatype == "FP16":
        return np.array([[0.1, -2.5, 65504.0], [6.1e-5, 0.0, -0.0]], dtype=dtype)
    values = [[0.1, -1e-30, 3.4e38], [np.pi, -0.0, 12345.678]]
    return np.array(values, dtype=dtype)


ALL_DATATYPES = list(DATATYPE_TO_NUMPY)


def _assert_same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert got.shape == want.shape
    assert got.dtype == DATATYPE_TO_NUMPY[datatype]
    if datatype == "BYTES":
        assert got.ravel().tolist() == want.ravel().tolist()
        assert all(type(x) is bytes for x in got.ravel().tolist())
    else:
        np.testing.assert_array_equal(got, want)
        # -0.0 and 0.0 compare equal; the bits must survive too.
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def _header_length(headers: dict[str, str]) -> int | None:
    return parse_header_length(headers.get(INFERENCE_HEADER_CONTENT_LENGTH))


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_numpy_to_datatype_inverts_the_table(datatype: str) -> None:
    assert numpy_to_datatype(DATATYPE_TO_NUMPY[datatype]) == datatype


def test_str_and_bytes_dtypes_are_bytes_and_exotic_dtypes_are_refused() -> None:
    assert numpy_to_datatype(np.dtype("S4")) == "BYTES"
    assert numpy_to_datatype(np.dtype("U4")) == "BYTES"
    with pytest.raises(TypeError, match="complex128"):
        numpy_to_datatype(np.complex128)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_request_round_trip(datatype: str, binary: bool) -> None:
    array = _sample(datatype)
    body, headers = encode_infer_request({"x": array}, binary=binary, request_id="r-1")
    assert (INFERENCE_HEADER_CONTENT_LENGTH in headers) == binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")

    request = decode_infer_request(body, _header_length(headers))
    assert request.id == "r-1"
    assert request.input_datatypes == {"x": datatype}
    assert request.outputs is None
    assert request.binary_data_output is True
    _assert_same(request.inputs["x"], array, datatype)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_response_round_trip(datatype: str, binary: bool) -> None:
    array = _sample(datatype)
    request = InferRequest(id="7", inputs={}, input_datatypes={}, outputs=None, binary_data_output=binary)
    body, headers = encode_infer_response(
        model_name="m", model_version="2", request_id="7", outputs={"y": array}, request=request
    )
    arrays, doc = decode_infer_response(body, _header_length(headers))
    assert doc["model_name"] == "m"
    assert doc["model_version"] == "2"
    assert doc["id"] == "7"
    assert ("binary_data_size" in doc["outputs"][0].get("parameters", {})) == binary
    _assert_same(arrays["y"], array, datatype)


def _json_data(array: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()
    return array.tolist()


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_nested_json_data_is_read_row_major(datatype: str) -> None:
    array = _sample(datatype)
    doc = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": _json_data(array, datatype)}]
    }
    request = decode_infer_request(orjson.dumps(doc), None)
    _assert_same(request.inputs["x"], array, datatype)


def test_nested_data_may_group_differently_from_the_shape_as_kserve_and_triton_read_it() -> None:
    doc = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2], [3, 4], [5, 6]]}]}
    request = decode_infer_request(orjson.dumps(doc), None)
    np.testing.assert_array_equal(request.inputs["x"], [[1, 2, 3], [4, 5, 6]])


def test_json_integers_are_exact_at_the_64_bit_limits() -> None:
    doc = {
        "inputs": [
            {"name": "u", "shape": [2], "datatype": "UINT64", "data": [2**64 - 1, 0]},
            {"name": "i", "shape": [2], "datatype": "INT64", "data": [-(2**63), 2**63 - 1]},
        ]
    }
    request = decode_infer_request(orjson.dumps(doc), None)
    assert request.inputs["u"].tolist() == [2**64 - 1, 0]
    assert request.inputs["i"].tolist() == [-(2**63), 2**63 - 1]


def test_integers_are_accepted_in_float_tensors() -> None:
    doc = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2.5, -3]}]}
    request = decode_infer_request(orjson.dumps(doc), None)
    np.testing.assert_array_equal(request.inputs["x"], np.array([1, 2.5, -3], dtype=np.float32))


@pytest.mark.parametrize("shape", [[0], [2, 0], [0, 5]])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_empty_tensors(shape: list[int], binary: bool) -> None:
    for datatype in ("FP32", "BYTES", "BOOL"):
        array = np.empty(shape, dtype=DATATYPE_TO_NUMPY[datatype])
        body, headers = encode_infer_request({"x": array}, binary=binary)
        request = decode_infer_request(body, _header_length(headers))
        assert request.inputs["x"].shape == tuple(shape)
        assert request.inputs["x"].dtype == DATATYPE_TO_NUMPY[datatype]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_scalar_tensor_has_an_empty_shape(binary: bool) -> None:
    body, headers = encode_infer_request({"x": np.float64(2.5)}, binary=binary)
    request = decode_infer_request(body, _header_length(headers))
    assert request.inputs["x"].shape == ()
    assert float(request.inputs["x"]) == 2.5


def test_several_binary_and_json_inputs_mixed_in_one_body() -> None:
    """Binary chunks follow the JSON in the order of the inputs that carry binary_data_size."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"first", b"second"], dtype=object)
    c = np.array([1, 2, 3], dtype=np.int8)
    raw_a, raw_c = a.tobytes(), c.tobytes()
    raw_s = b"".join(len(x).to_bytes(4, "little") + x for x in s)
    doc = {
        "inputs": [
            {
                "name": "a",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw_a)},
            },
            {"name": "j", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw_s)}},
            {"name": "c", "shape": [3], "datatype": "INT8", "parameters": {"binary_data_size": len(raw_c)}},
        ]
    }
    header = orjson.dumps(doc)
    request = decode_infer_request(header + raw_a + raw_s + raw_c, len(header))
    np.testing.assert_array_equal(request.inputs["a"], a)
    assert request.inputs["j"].tolist() == [True, False]
    assert request.inputs["s"].tolist() == [b"first", b"second"]
    np.testing.assert_array_equal(request.inputs["c"], c)
    assert list(request.inputs) == ["a", "j", "s", "c"]


def test_binary_arrays_are_aligned_whatever_the_header_length() -> None:
    array = np.arange(4, dtype=np.float64)
    for pad in range(8):
        doc = {
            "id": "x" * pad,
            "inputs": [
                {"name": "x", "shape": [4], "datatype": "FP64", "parameters": {"binary_data_size": 32}}
            ],
        }
        header = orjson.dumps(doc)
        got = decode_infer_request(header + array.tobytes(), len(header)).inputs["x"]
        assert got.flags.aligned
        np.testing.assert_array_equal(got, array)


def test_request_parameters_and_requested_outputs_are_kept() -> None:
    doc = {
        "id": "abc",
        "parameters": {"binary_data_output": True, "priority": 3},
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}],
        "outputs": [
            {"name": "a"},
            {"name": "b", "parameters": {"binary_data": False}},
            {"name": "c", "parameters": {"binary_data": True}},
        ],
    }
    request = decode_infer_request(orjson.dumps(doc), None)
    assert request.id == "abc"
    assert request.binary_data_output is True
    assert request.parameters == {"binary_data_output": True, "priority": 3}
    assert request.outputs == [
        RequestedOutput("a", None),
        RequestedOutput("b", False),
        RequestedOutput("c", True),
    ]


def test_an_empty_outputs_list_means_all_outputs() -> None:
    doc = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}], "outputs": []}
    assert decode_infer_request(orjson.dumps(doc), None).outputs is None


def test_response_selects_orders_and_chooses_binary_per_output() -> None:
    outputs = {
        "a": np.array([1.5, 2.5], dtype=np.float32),
        "b": np.array([[1, 2]], dtype=np.int64),
        "c": np.array([b"x"], dtype=object),
    }
    request = InferRequest(
        id=None,
        inputs={},
        input_datatypes={},
        outputs=[RequestedOutput("c", None), RequestedOutput("a", False)],
        binary_data_output=True,
    )
    body, headers = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=outputs, request=request
    )
    arrays, doc = decode_infer_response(body, _header_length(headers))
    assert [o["name"] for o in doc["outputs"]] == ["c", "a"]
    assert "model_version" not in doc and "id" not in doc
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 5}  # follows binary_data_output
    assert doc["outputs"][1]["data"] == [1.5, 2.5]  # binary_data false wins
    assert list(arrays) == ["c", "a"]
    assert arrays["c"].tolist() == [b"x"]


def test_pure_json_response_has_json_content_type_and_flat_data() -> None:
    request = InferRequest(id="1", inputs={}, input_datatypes={})
    body, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id="1",
        outputs={"y": np.array([[0.5, 1.0], [2.0, 3.0]], dtype=np.float32)},
        request=request,
    )
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0.5, 1.0, 2.0, 3.0]}],
    }


def test_fp32_json_numbers_are_the_shortest_exact_form() -> None:
    request = InferRequest(id=None, inputs={}, input_datatypes={})
    body, _ = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs={"y": np.array([0.1], dtype=np.float32)},
        request=request,
    )
    assert b'"data":[0.1]' in body


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (np.array([b"\xff\xfe", b"ok"], dtype=object), "non-UTF-8 BYTES"),
        (np.array([1.0, np.nan, np.inf], dtype=np.float32), "NaN/inf"),
    ],
)
def test_outputs_json_cannot_carry_are_sent_binary_instead(value: np.ndarray, reason: str) -> None:
    request = InferRequest(id=None, inputs={}, input_datatypes={}, binary_data_output=False)
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs={"y": value, "z": np.array([1], dtype=np.int32)},
        request=request,
    )
    assert headers["Content-Type"] == "application/octet-stream", reason
    arrays, doc = decode_infer_response(body, _header_length(headers))
    assert "binary_data_size" in doc["outputs"][0]["parameters"]
    assert doc["outputs"][1]["data"] == [1]  # the others stay JSON as asked
    if value.dtype == object:
        assert arrays["y"].tolist() == value.tolist()
    else:
        assert arrays["y"].tobytes() == value.tobytes()


def test_str_outputs_and_fixed_width_bytes_outputs_are_sent_as_bytes() -> None:
    request = InferRequest(id=None, inputs={}, input_datatypes={}, binary_data_output=True)
    outputs = {"u": np.array(["가나", "b"]), "s": np.array([b"ab", b"c"]), "o": np.array(["x"], dtype=object)}
    body, headers = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=outputs, request=request
    )
    arrays, _ = decode_infer_response(body, _header_length(headers))
    assert arrays["u"].tolist() == ["가나".encode(), b"b"]
    assert arrays["s"].tolist() == [b"ab", b"c"]
    assert arrays["o"].tolist() == [b"x"]


def test_non_contiguous_and_big_endian_outputs_are_written_little_endian_row_major() -> None:
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    view = base[:, ::2]
    request = InferRequest(id=None, inputs={}, input_datatypes={}, binary_data_output=True)
    body, headers = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs={"y": view}, request=request
    )
    arrays, _ = decode_infer_response(body, _header_length(headers))
    np.testing.assert_array_equal(arrays["y"], [[0, 2], [4, 6], [8, 10]])
    header_length = _header_length(headers)
    assert body[header_length : header_length + 8] == b"\x00\x00\x00\x00\x02\x00\x00\x00"


def test_client_request_names_outputs_with_binary_flag() -> None:
    body, headers = encode_infer_request(
        {"x": np.zeros(2, np.float32)}, binary=False, outputs=["a", "b"], binary_outputs=False
    )
    request = decode_infer_request(body, _header_length(headers))
    assert request.outputs == [RequestedOutput("a", False), RequestedOutput("b", False)]
    assert request.binary_data_output is False


def test_client_sends_str_arrays_as_utf8_bytes() -> None:
    for binary in (True, False):
        body, headers = encode_infer_request({"text": np.array(["안녕", "hi"])}, binary=binary)
        request = decode_infer_request(body, _header_length(headers))
        assert request.inputs["text"].tolist() == ["안녕".encode(), b"hi"]
        assert request.input_datatypes == {"text": "BYTES"}
