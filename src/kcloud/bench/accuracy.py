"""Score LoadGen's accuracy log against the model's labelled data set.

This is the accuracy script of an MLPerf benchmark: it reads what LoadGen logged (the bytes the
SUT answered for each sample), decodes them with the scored output's datatype from the model's
config, and scores them with the data set's own metric (`kcloud.models.datasets`): top-1 for
the vision model, mean cosine against the sentence-transformers references for MiniLM. The run
passes when the score reaches the config's target (`reference x ratio`, MLPerf's "-99").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kcloud.bench.loadgen_logs import read_accuracy_log
from kcloud.datatypes import DATATYPE_TO_NUMPY
from kcloud.models.config import ModelConfig
from kcloud.models.datasets import Dataset


def output_dtype(config: ModelConfig, output: str) -> np.dtype:
    spec = next((o for o in config.outputs if o.name == output), None)
    if spec is None:
        raise ValueError(f"model {config.name} has no output `{output}`")
    dtype = DATATYPE_TO_NUMPY[spec.datatype]
    if dtype.kind == "O":
        raise ValueError(
            f"output `{output}` is BYTES; the accuracy log cannot carry it as a fixed-width array"
        )
    return dtype


def score_accuracy_log(path: Path, dataset: Dataset, config: ModelConfig) -> dict[str, Any]:
    """The accuracy block of `result.json`; raises ValueError when the log cannot be scored."""
    entries = read_accuracy_log(path)
    dtype = output_dtype(config, dataset.output)
    by_index: dict[int, np.ndarray] = {}
    empty = 0
    for index, raw in entries:
        if not raw:
            empty += 1
            continue
        if len(raw) % dtype.itemsize:
            raise ValueError(f"{path}: sample {index} has {len(raw)} bytes, not a whole number of {dtype}")
        by_index[index] = np.frombuffer(raw, dtype=dtype)
    total = len(dataset)
    missing = sorted(set(range(total)) - set(by_index))
    target = config.accuracy
    block: dict[str, Any] = {
        "metric": dataset.metric,
        "output": dataset.output,
        "samples_logged": len(entries),
        "samples_scored": len(by_index),
        "samples_in_dataset": total,
        "failed_responses": empty,
        "reference": target.reference if target else None,
        "ratio": target.ratio if target else None,
        "threshold": target.threshold if target else None,
        "dataset": str(dataset.path),
        "source": f"{path.name} (LoadGen) scored against the data set's references",
    }
    if missing:
        # every sample must be answered for the score to mean what the target means
        block.update(
            score=None,
            passed=False,
            reason=f"{len(missing)} of {total} samples have no answer in the accuracy log",
        )
        return block
    rows = [by_index[i] for i in range(total)]
    if dataset.metric == "top1" and all(r.size == 1 for r in rows):
        values = np.concatenate(rows)
    else:
        values = np.stack(rows)
    score = dataset.score(values)
    block.update(
        score=score,
        passed=bool(target is not None and score >= target.threshold),
        reason=None if target is not None else "the model config has no accuracy target",
    )
    return block
