"""Pipelines: every bad request is refused in `prepare` with a message naming the input."""

from __future__ import annotations

import numpy as np
import pytest
from model_files import affine_config

from kcloud.models.config import ModelConfig
from kcloud.models.local import LocalRunner
from kcloud.models.pipeline import InputError
from kcloud.models.pipelines import SentenceEmbeddingPipeline, TensorPipeline, length_bucket, pipeline_for


def _texts(*items: bytes | str) -> np.ndarray:
    return np.array(list(items), dtype=object)


# ------------------------------------------------------------------------------------- tensors
@pytest.fixture
def tensor() -> TensorPipeline:
    return TensorPipeline(affine_config(features=4))


def test_tensor_prepare_collate_split(tensor: TensorPipeline) -> None:
    a = tensor.prepare({"x": np.ones((2, 4), np.float32)})
    b = tensor.prepare({"x": np.zeros((3, 4), np.float32)})
    assert (a.rows, b.rows) == (2, 3)
    feeds = tensor.collate([a, b])
    assert feeds["x"].shape == (5, 4)
    outputs = {"y": np.arange(15, dtype=np.float32).reshape(5, 3)}
    first, second = tensor.split(outputs, [a, b])
    np.testing.assert_array_equal(first["y"], outputs["y"][:2])
    np.testing.assert_array_equal(second["y"], outputs["y"][2:])


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"x": np.ones((2, 4), np.float64)}, r"input `x`: datatype FP64, but the model expects FP32"),
        ({"x": np.ones((2, 4), np.int32)}, r"input `x`: datatype INT32, but the model expects FP32"),
        ({"x": np.array([b"a", b"b"], dtype=object)}, r"datatype BYTES, but the model expects FP32"),
        ({"x": np.ones(4, np.float32)}, r"input `x`: shape \[4\] has rank 1, but the model expects rank 2"),
        (
            {"x": np.ones((2, 5), np.float32)},
            r"input `x`: shape \[2, 5\] does not fit \[-1, 4\] \(dimension 1 must be 4\)",
        ),
        ({}, r"missing input\(s\) \['x'\]; the model takes \['x'\]"),
        ({"x": np.ones((1, 4), np.float32), "z": np.ones(1)}, r"unexpected input\(s\) \['z'\]"),
        ({"x": np.ones((0, 4), np.float32)}, r"input `x` is empty \(0 rows\)"),
        ({"x": np.ones((9, 4), np.float32)}, r"9 rows, more than this model's max batch size 8"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, r"input `x`: expected a tensor \(numpy array\), got list"),
    ],
)
def test_tensor_bad_input(tensor: TensorPipeline, inputs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        tensor.prepare(inputs)


def test_tensor_inputs_must_agree_on_rows() -> None:
    config = ModelConfig.model_validate(
        {
            "name": "two",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "b", "datatype": "INT64", "shape": [-1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        }
    )
    pipeline = TensorPipeline(config)
    with pytest.raises(InputError, match=r"`a` has 2 rows, `b` has 3"):
        pipeline.prepare({"a": np.ones((2, 2), np.float32), "b": np.ones(3, np.int64)})


def test_tensor_without_batching_takes_the_whole_shape() -> None:
    pipeline = TensorPipeline(
        affine_config(
            inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 4]}],
            outputs=[{"name": "y", "datatype": "FP32", "shape": [2, 3]}],
            batching={"max_batch_size": 0},
        )
    )
    prepared = pipeline.prepare({"x": np.ones((2, 4), np.float32)})
    assert prepared.rows == 1
    with pytest.raises(ValueError, match="does not batch"):
        pipeline.collate([prepared, prepared])


def test_variable_trailing_dims_carry_a_shape_key() -> None:
    pipeline = TensorPipeline(
        affine_config(
            inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        )
    )
    a = pipeline.prepare({"x": np.ones((1, 4), np.float32)})
    b = pipeline.prepare({"x": np.ones((1, 5), np.float32)})
    assert a.extra["shape_key"] != b.extra["shape_key"]
    with pytest.raises(ValueError, match="shape_key"):
        pipeline.collate([a, b])


def test_digits_through_onnxruntime(digits) -> None:
    runner = LocalRunner(digits)
    image = np.zeros((3, 1, 8, 8), np.float32)
    [out] = runner.run([{"image": image}])
    assert out["probabilities"].shape == (3, 10) and out["label"].shape == (3,)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert out["label"].dtype == np.int64


# ---------------------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def text(minilm) -> SentenceEmbeddingPipeline:
    pipeline = pipeline_for(minilm)
    assert isinstance(pipeline, SentenceEmbeddingPipeline)
    return pipeline


def test_text_prepare_counts_tokens(text: SentenceEmbeddingPipeline) -> None:
    prepared = text.prepare({"text": _texts(b"hello world", "안녕하세요".encode())})
    assert prepared.rows == 2
    # [CLS] hello world [SEP]
    assert prepared.extra["token_counts"][0] == 4
    assert prepared.extra["tokens"] == sum(prepared.extra["token_counts"])
    ids, mask = prepared.feeds["input_ids"], prepared.feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape == (2, max(prepared.extra["token_counts"]))
    assert mask.sum(axis=1).tolist() == prepared.extra["token_counts"]


def test_text_truncates_at_max_length(text: SentenceEmbeddingPipeline) -> None:
    long_text = " ".join(["tokens"] * 1000).encode()
    prepared = text.prepare({"text": _texts(long_text)})
    assert prepared.extra["tokens"] == text.config.processing.max_length == 256


@pytest.mark.parametrize(("tokens", "bucket"), [(1, 16), (16, 16), (17, 32), (32, 32), (33, 64), (256, 256)])
def test_length_buckets_are_powers_of_two(tokens: int, bucket: int) -> None:
    assert length_bucket(tokens) == bucket


def test_text_requests_batch_with_requests_of_similar_length(text: SentenceEmbeddingPipeline) -> None:
    """The batcher shares batches only among equal `shape_key`s: a long sentence does not make
    short ones pay for its padding."""
    def key(*sentences: bytes) -> object:
        return text.prepare({"text": _texts(*sentences)}).extra["shape_key"]

    short, other_short = key(b"hello world"), key(b"a short one")
    long = key(" ".join(["word"] * 100).encode())
    assert short == other_short == 16 and long == 128
    assert key(b"hi", " ".join(["word"] * 100).encode()) == long  # a request goes by its longest


def test_text_collate_pads_to_the_longest(text: SentenceEmbeddingPipeline) -> None:
    short = text.prepare({"text": _texts(b"hi")})
    long = text.prepare({"text": _texts(b"a somewhat longer sentence than the other one", b"x")})
    feeds = text.collate([short, long])
    width = long.feeds["input_ids"].shape[1]
    assert feeds["input_ids"].shape == (3, width)
    assert feeds["attention_mask"][0].sum() == short.extra["tokens"]
    assert (feeds["input_ids"][0, short.extra["tokens"] :] == 0).all()


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"text": _texts(b"fine", b"\xff\xfe broken")}, r"input `text` element 1 is not valid UTF-8"),
        ({"text": np.array([], dtype=object)}, r"input `text` is empty \(0 rows\)"),
        ({"text": np.ones(2, np.float32)}, r"input `text`: datatype FP32, but the model expects BYTES"),
        (
            {"text": _texts(b"a", b"b").reshape(1, 2)},
            r"shape \[1, 2\] has rank 2, but the model expects rank 1",
        ),
        ({"text": np.array([b"a", 3], dtype=object)}, r"element 1 is int, expected bytes"),
        ({"txt": _texts(b"a")}, r"missing input\(s\) \['text'\]; unexpected input\(s\) \['txt'\]"),
        ({"text": _texts(*([b"x"] * 65))}, r"65 rows, more than this model's max batch size 64"),
    ],
)
def test_text_bad_input(text: SentenceEmbeddingPipeline, inputs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        text.prepare(inputs)


def test_text_accepts_str_and_fixed_bytes(text: SentenceEmbeddingPipeline) -> None:
    as_bytes = text.prepare({"text": _texts(b"same text")})
    as_str = text.prepare({"text": np.array(["same text"])})
    as_fixed = text.prepare({"text": np.array([b"same text"])})
    for other in (as_str, as_fixed):
        np.testing.assert_array_equal(other.feeds["input_ids"], as_bytes.feeds["input_ids"])


def test_embedding_does_not_depend_on_batch_company(minilm) -> None:
    runner = LocalRunner(minilm)
    alone = runner.run([{"text": _texts(b"The cat sat on the mat.")}])[0]["embedding"]
    crowded = runner.run(
        [
            {
                "text": _texts(
                    "훨씬 더 긴 한국어 문장으로, 배치의 패딩이 결과를 바꾸지 않는지 봅니다.".encode()
                )
            },
            {"text": _texts(b"The cat sat on the mat.")},
        ]
    )[1]["embedding"]
    assert alone.shape == crowded.shape == (1, 384)
    np.testing.assert_allclose(alone, crowded, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, rtol=1e-5)
