"""OpenAI-compatible `/v1` routes, driven by the official `openai` Python client itself."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

MINILM = "all-MiniLM-L6-v2"
SENTENCES = ["K-Cloud puts Korean NPUs in the cloud.", "Embeddings over an OpenAI-compatible API."]


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway(models=["noop", MINILM])


@pytest.fixture(scope="module")
def client(gateway):
    # No retries: a 429/5xx must surface here, not be retried into a pass.
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def reference(gateway) -> np.ndarray:
    """The same sentences through OIP v2, to compare the OpenAI answers with."""
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": SENTENCES}]}
    body = httpx.post(f"{gateway.url}/v2/models/{MINILM}/infer", json=request).json()
    return np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(2, 384)


def _token_count(builtin_repository, texts: list[str]) -> int:
    from tokenizers import Tokenizer

    entry = builtin_repository.get(MINILM)
    tokenizer = Tokenizer.from_file(str(entry.file("tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return sum(len(tokenizer.encode(t).ids) for t in texts)


def test_models_list(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"noop", MINILM}
    assert models[MINILM].object == "model" and models[MINILM].owned_by == "kcloud"
    assert models[MINILM].created > 1_600_000_000


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_both_encodings(client, reference, builtin_repository, encoding_format):
    response = client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format=encoding_format)
    assert response.object == "list" and response.model == MINILM
    assert [d.index for d in response.data] == [0, 1]
    if encoding_format == "base64":  # explicitly asked for: the client leaves the string alone
        vectors = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data])
    else:
        vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference, atol=1e-6)
    tokens = _token_count(builtin_repository, SENTENCES)
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_embeddings_client_default_decodes_base64(client, reference):
    # Without encoding_format the client asks for base64 and decodes it into floats itself.
    response = client.embeddings.create(model=MINILM, input=SENTENCES[0])
    assert len(response.data) == 1
    vector = np.array(response.data[0].embedding, dtype=np.float32)
    np.testing.assert_allclose(vector, reference[0], atol=1e-6)


def test_more_inputs_than_a_batch_are_split_and_kept_in_order(client, reference):
    texts = SENTENCES * 40  # 80 > MiniLM's max batch of 64
    response = client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    assert [d.index for d in response.data] == list(range(80))
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors[::2], np.repeat(reference[:1], 40, axis=0), atol=1e-6)
    np.testing.assert_allclose(vectors[1::2], np.repeat(reference[1:], 40, axis=0), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"model": MINILM, "input": ""}, "BadRequestError", "empty string"),
        ({"model": MINILM, "input": []}, "BadRequestError", "empty list"),
        ({"model": MINILM, "input": ["fine", ""]}, "BadRequestError", "input[1]"),
        ({"model": MINILM, "input": [[101, 2023]]}, "BadRequestError", "token ids"),
        ({"model": "noop", "input": "x"}, "BadRequestError", "not an embedding model"),
        ({"model": "text-embedding-3-small", "input": "x"}, "NotFoundError", "not served"),
        ({"model": MINILM, "input": "x", "dimensions": 128}, "BadRequestError", "384"),
        ({"model": MINILM, "input": "x", "encoding_format": "int8"}, "BadRequestError", "encoding_format"),
    ],
)
def test_bad_requests_raise_the_clients_typed_errors(client, gateway, kwargs, error, words):
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(**kwargs)
    assert type(caught.value).__name__ == error
    assert words in caught.value.message
    assert isinstance(caught.value.body, dict) and words in caught.value.body["message"]
    # and the server goes on serving
    assert client.embeddings.create(model=MINILM, input="still fine").data[0].index == 0


def test_malformed_json_body_is_openai_shaped(gateway):
    response = httpx.post(f"{gateway.url}/v1/embeddings", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "not valid JSON" in error["message"]


def test_unknown_field_is_refused(gateway):
    response = httpx.post(f"{gateway.url}/v1/embeddings",
                          json={"model": MINILM, "input": "x", "temprature": 1})
    assert response.status_code == 400
    assert "temprature" in response.json()["error"]["message"]
