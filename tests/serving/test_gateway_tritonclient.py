"""The unmodified standard OIP client, `tritonclient.http.InferenceServerClient`, against the real
gateway: health, metadata, and inference with binary and JSON tensors both ways."""

from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits-cnn"
NOOP = "noop"


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway()


@pytest.fixture(scope="module")
def triton(gateway):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{gateway.port}")
    yield client
    client.close()


def test_health_and_server_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MINILM)
    assert triton.is_model_ready(DIGITS, model_version="1")
    assert not triton.is_model_ready("nope")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]


def test_model_metadata(triton):
    meta = triton.get_model_metadata(DIGITS)
    assert meta["name"] == DIGITS and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert triton.get_model_metadata(DIGITS, model_version="1") == meta


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_digits(triton, builtin_repository, binary_in, binary_out):
    data = np.load(builtin_repository.get(DIGITS).model_dir / "digits-test.npz")
    images, labels = data["input.image"][:16], data["reference"][:16]
    tensor = httpclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=binary_out),
               httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)]
    result = triton.infer(DIGITS, [tensor], outputs=outputs, request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    predicted = result.as_numpy("label")
    assert predicted.dtype == np.int64 and predicted.shape == (16,)
    assert (predicted == labels).mean() >= 0.75
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_text_bytes(triton, binary):
    texts = np.array([b"Sentence one.", "두 번째 문장.".encode()], dtype=np.object_)
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("embedding", binary_data=binary)]
    result = triton.infer(MINILM, [tensor], outputs=wanted)
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_infer_with_version_and_all_outputs(triton):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    tensor = httpclient.InferInput("input", [3, 16], "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer(NOOP, [tensor], model_version="1", timeout=10_000_000)
    np.testing.assert_array_equal(result.as_numpy("output"), x)


def test_errors_reach_the_client_with_our_message(triton):
    tensor = httpclient.InferInput("input", [1, 16], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float64))
    with pytest.raises(InferenceServerException) as wrong_type:
        triton.infer(NOOP, [tensor])
    assert wrong_type.value.status() == "400" and "FP64" in wrong_type.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("nope")
    assert unknown.value.status() == "404" and "nope" in unknown.value.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton, algorithm):
    x = np.full((2, 16), 3.5, np.float32)
    tensor = httpclient.InferInput("input", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer(NOOP, [tensor], request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("output"), x)
