"""The fixed MiniLM sentence set and its sentence-transformers reference embeddings.

Both ship in the package (`data/`): the sentences as JSON, the references as `.npz` computed
once with sentence-transformers by `scripts/make_minilm_references.py`. They are the yardstick
that our torch-free ONNX graph is held to (cosine >= 0.999 per sentence) and the MiniLM
accuracy data set bench scores against.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from kcloud.models.errors import BuildError

DATA_DIR = Path(__file__).parent / "data"
SENTENCES_FILE = DATA_DIR / "minilm_parity_sentences.json"
REFERENCE_FILE = DATA_DIR / "minilm_parity_reference.npz"


def load_sentences() -> list[str]:
    return list(json.loads(SENTENCES_FILE.read_text(encoding="utf-8"))["sentences"])


def sentences_sha256(sentences: list[str]) -> str:
    return hashlib.sha256(json.dumps(sentences, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_references() -> tuple[list[str], np.ndarray]:
    """Sentences and their reference embeddings, refusing a reference file made for other sentences."""
    sentences = load_sentences()
    if not REFERENCE_FILE.is_file():
        raise BuildError(f"{REFERENCE_FILE} is missing; regenerate it with scripts/make_minilm_references.py")
    with np.load(REFERENCE_FILE, allow_pickle=False) as data:
        embeddings = data["embeddings"].astype(np.float32)
        digest = str(data["sentences_sha256"])
    if digest != sentences_sha256(sentences) or len(embeddings) != len(sentences):
        raise BuildError(
            f"{REFERENCE_FILE} was made for other sentences than {SENTENCES_FILE}; "
            f"regenerate it with scripts/make_minilm_references.py"
        )
    return sentences, embeddings
