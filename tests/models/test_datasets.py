"""Data sets for bench: per-sample inputs, references, and the metric's score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_files import affine_config

from kcloud.models.datasets import load_dataset, load_dataset_file
from kcloud.models.errors import ModelFileError
from kcloud.models.repository import ModelEntry


def test_minilm_dataset_is_bytes_with_reference_embeddings(minilm) -> None:
    dataset = load_dataset(minilm)
    assert dataset.metric == "cosine" and dataset.output == "embedding"
    assert len(dataset) == dataset.references.shape[0] >= 100
    sample = dataset.inputs[0]["text"]
    assert sample.dtype == object and sample.shape == (1,) and isinstance(sample[0], bytes)
    assert dataset.score(dataset.references) == pytest.approx(1.0)
    assert dataset.score(-dataset.references) == pytest.approx(-1.0)


def test_digits_scores_labels_and_probabilities(digits) -> None:
    dataset = load_dataset(digits)
    assert dataset.metric == "top1" and dataset.output == "label"
    labels = dataset.references
    assert dataset.score(labels) == 1.0
    wrong = labels.copy()
    wrong[:45] = (wrong[:45] + 1) % 10
    assert dataset.score(wrong) == pytest.approx(0.9)
    # per-sample dicts as a pipeline's split returns them, and class scores instead of labels
    assert dataset.score([{"label": np.array([v])} for v in labels]) == 1.0
    assert dataset.score(np.eye(10, dtype=np.float32)[labels]) == 1.0
    with pytest.raises(ValueError, match="outputs lack `label`"):
        dataset.score([{"probabilities": np.zeros((1, 10))} for _ in labels])


def test_model_without_accuracy_dataset(tmp_path: Path) -> None:
    entry = ModelEntry("affine", 1, affine_config(), tmp_path, tmp_path, tmp_path / "model.onnx", "0" * 64)
    with pytest.raises(ModelFileError, match="has no accuracy data set"):
        load_dataset(entry)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"input.z": np.ones((3, 4), np.float32), "reference": np.zeros(3)},
            r"holds inputs \['z'\], the model takes \['x'\]",
        ),
        (
            {"input.x": np.ones((3, 4), np.float64), "reference": np.zeros(3)},
            r"input `x` is FP64 .* model's FP32",
        ),
        (
            {"input.x": np.ones((3, 4), np.float32), "reference": np.zeros(2)},
            r"has 3 samples, `reference` has 2",
        ),
        ({"input.x": np.ones((3, 4), np.float32)}, r"no `reference` array"),
    ],
)
def test_dataset_that_does_not_fit_the_model(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(ModelFileError, match=match):
        load_dataset_file(tmp_path / "data.npz", affine_config(), "top1")


@pytest.mark.parametrize("content", [b"labels,images\n", b""], ids=["csv", "empty"])
def test_dataset_that_is_not_npz(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "data.npz").write_bytes(content)
    with pytest.raises(ModelFileError, match=r"not a readable \.npz data set"):
        load_dataset_file(tmp_path / "data.npz", affine_config(), "top1")
