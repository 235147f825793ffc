"""Interop with the unmodified standard OIP client, tritonclient[http].

Requests are built by tritonclient's own `InferInput.set_data_from_numpy`, `InferRequestedOutput`
and request-body builder (`tritonclient.http._utils._get_inference_request`, the function its
`InferenceServerClient.infer` calls) and decoded by our server side; our responses are parsed by
`InferResult.from_response_body(...).as_numpy()`, exactly what `infer()` returns to users.
"""

from __future__ import annotations

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402

from kcloud.serving.oip import (  # noqa: E402
    DATATYPE_TO_NUMPY,
    INFERENCE_HEADER_CONTENT_LENGTH,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
)

ALL_DATATYPES = list(DATATYPE_TO_NUMPY)


def _sample(datatype: str) -> np.ndarray:
    """A 2x3 tensor per datatype, with each integer type's extremes (same as test_oip_codec's)."""
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
    return np.array([[0.1, -1e-30, 3.4e38], [np.pi, -0.0, 12345.678]], dtype=dtype)


def _triton_body(inputs, outputs=None, request_id=""):
    """What tritonclient's `InferenceServerClient.infer` would POST: (body, header length or None)."""
    return _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )


def _triton_input(name: str, array: np.ndarray, datatype: str, binary: bool):
    infer_input = tritonclient_http.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_tritonclient_requests_decode(datatype: str, binary: bool) -> None:
    array = _sample(datatype)
    body, json_size = _triton_body([_triton_input("x", array, datatype, binary)], request_id="42")
    assert (json_size is not None) == binary

    request = decode_infer_request(body, json_size)
    assert request.id == "42"
    assert request.input_datatypes == {"x": datatype}
    got = request.inputs["x"]
    assert got.shape == array.shape and got.dtype == DATATYPE_TO_NUMPY[datatype]
    if datatype == "BYTES":
        assert got.tolist() == array.tolist()
    else:
        assert got.tobytes() == array.tobytes()
    # tritonclient asks for binary outputs when it names none.
    assert request.outputs is None and request.binary_data_output is True


def test_tritonclient_requested_outputs_decode() -> None:
    x = np.ones((1, 4), dtype=np.float32)
    outputs = [
        tritonclient_http.InferRequestedOutput("a", binary_data=True),
        tritonclient_http.InferRequestedOutput("b", binary_data=False),
    ]
    body, json_size = _triton_body([_triton_input("x", x, "FP32", True)], outputs=outputs)
    request = decode_infer_request(body, json_size)
    assert request.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]
    assert request.binary_data_output is False


def test_tritonclient_mixed_binary_and_json_inputs_decode() -> None:
    text = np.array([[b"a sentence of words"], [b"another"]], dtype=object)
    mask = np.array([[True, False, True]])
    half = np.array([0.5, -1.25, 65504.0], dtype=np.float16)
    body, json_size = _triton_body(
        [
            _triton_input("text", text, "BYTES", True),
            _triton_input("mask", mask, "BOOL", False),
            _triton_input("half", half, "FP16", True),
        ]
    )
    request = decode_infer_request(body, json_size)
    assert request.inputs["text"].tolist() == text.tolist()
    assert request.inputs["mask"].tolist() == mask.tolist()
    assert request.inputs["half"].tobytes() == half.tobytes()


def _parse_with_tritonclient(body: bytes, headers: dict[str, str]):
    return tritonclient_http.InferResult.from_response_body(
        body, header_length=parse_header_length(headers.get(INFERENCE_HEADER_CONTENT_LENGTH))
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_tritonclient_parses_our_responses(datatype: str, binary: bool) -> None:
    array = _sample(datatype)
    # The request as tritonclient sends it when the user names the output.
    request_body, json_size = _triton_body(
        [_triton_input("x", np.zeros(1, np.float32), "FP32", True)],
        outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=binary)],
        request_id="id-9",
    )
    request = decode_infer_request(request_body, json_size)
    body, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=request.id,
        outputs={"y": array, "unrequested": np.zeros(3, np.float32)},
        request=request,
    )
    result = _parse_with_tritonclient(body, headers)
    assert result.get_response()["id"] == "id-9"
    assert result.get_output("unrequested") is None
    got = result.as_numpy("y")
    assert got.shape == array.shape
    if datatype == "BYTES":
        # tritonclient hands JSON BYTES back as str and binary BYTES as bytes.
        want = array.tolist() if binary else [[b.decode() for b in row] for row in array.tolist()]
        assert got.tolist() == want
    else:
        assert got.dtype == array.dtype
        assert got.tobytes() == array.tobytes()


def test_tritonclient_parses_forced_binary_outputs() -> None:
    """Non-UTF-8 BYTES asked for as JSON come back binary; tritonclient reads them unchanged."""
    request_body, json_size = _triton_body(
        [_triton_input("x", np.zeros(1, np.float32), "FP32", False)],
        outputs=[
            tritonclient_http.InferRequestedOutput("raw", binary_data=False),
            tritonclient_http.InferRequestedOutput("nums", binary_data=False),
        ],
    )
    request = decode_infer_request(request_body, json_size)
    raw = np.array([b"\xff\x00binary", b"ok"], dtype=object)
    nums = np.array([np.nan, 1.0, -np.inf], dtype=np.float64)
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs={"raw": raw, "nums": nums},
        request=request,
    )
    result = _parse_with_tritonclient(body, headers)
    assert result.as_numpy("raw").tolist() == raw.tolist()
    assert result.as_numpy("nums").tobytes() == nums.tobytes()


def test_tritonclient_parses_all_outputs_when_none_named() -> None:
    body_in, json_size = _triton_body([_triton_input("x", np.zeros(2, np.int32), "INT32", True)])
    request = decode_infer_request(body_in, json_size)
    outputs = {
        "emb": np.random.default_rng(0).random((1, 384), dtype=np.float32),
        "label": np.array([b"cat"], dtype=object),
    }
    body, headers = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=outputs, request=request
    )
    assert headers["Content-Type"] == "application/octet-stream"
    result = _parse_with_tritonclient(body, headers)
    np.testing.assert_array_equal(result.as_numpy("emb"), outputs["emb"])
    assert result.as_numpy("label").tolist() == [b"cat"]
