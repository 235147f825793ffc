"""A model's labelled data set, and the score its accuracy target is measured with.

Bench (LoadGen's query sample library) needs per-sample public inputs and a way to score what
came back; keeping the file format and the metric here, beside the config that names them,
lets every SUT score the same way.

File format (`accuracy.dataset` in the config, an `.npz` in the model directory):
- `input.<name>`: one array per public input, samples along axis 0 (for a batching model that
  axis is the batch axis: sample `i` is `array[i:i+1]`). Text is stored as a unicode array and
  handed out as BYTES (numpy object arrays of UTF-8 `bytes`), as the gateway would.
- `reference`: labels (`top1`, int64 [N]) or reference vectors (`cosine`, float32 [N, dim]).

Metrics: `top1` = fraction of samples whose predicted label equals the reference label; the
prediction is the model's INT64 output if it has one, else the argmax of its first output.
`cosine` = mean cosine similarity between each output vector and its reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kcloud.datatypes import oip_datatype
from kcloud.models.config import ModelConfig
from kcloud.models.errors import ModelFileError
from kcloud.models.repository import ModelEntry

INPUT_PREFIX = "input."
REFERENCE_KEY = "reference"

Outputs = Sequence[dict[str, np.ndarray]] | np.ndarray


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of `a` with the same row of `b` (in float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


@dataclass
class Dataset:
    metric: str
    #: One public-input dict per sample (with a batch axis of 1 for a batching model).
    inputs: list[dict[str, np.ndarray]]
    #: Labels [N] for `top1`, reference vectors [N, dim] for `cosine`.
    references: np.ndarray
    #: The public output `score` reads.
    output: str
    path: Path

    def __len__(self) -> int:
        return len(self.inputs)

    def per_sample(self, outputs: Outputs) -> np.ndarray:
        """Score of each sample: 1.0/0.0 for `top1`, the cosine similarity for `cosine`.

        `outputs`: per-sample public output dicts in sample order (as a pipeline's `split`
        returns them), or an array already stacked in sample order.
        """
        values = self._stacked(outputs)
        if len(values) != len(self.references):
            raise ValueError(f"{len(values)} outputs for {len(self.references)} samples")
        if self.metric == "top1":
            if values.dtype.kind in "iu":  # labels
                predicted = values.reshape(len(values))
            else:  # scores per class
                predicted = values.reshape(len(values), -1).argmax(axis=1)
            return (predicted.astype(np.int64) == self.references).astype(np.float64)
        return row_cosines(values.reshape(len(values), -1), self.references.reshape(len(values), -1))

    def score(self, outputs: Outputs) -> float:
        """The accuracy metric over the whole set (top-1 accuracy or mean cosine)."""
        return float(self.per_sample(outputs).mean())

    def _stacked(self, outputs: Outputs) -> np.ndarray:
        if isinstance(outputs, np.ndarray):
            return outputs
        try:
            return np.stack([np.asarray(o[self.output]).reshape(-1) for o in outputs])
        except KeyError:
            raise ValueError(f"outputs lack `{self.output}`, the output this data set is scored on") from None


def _scored_output(config: ModelConfig, metric: str) -> str:
    if metric == "top1":
        labels = [o.name for o in config.outputs if o.datatype in ("INT64", "INT32") and len(o.shape) == 1]
        return labels[0] if labels else config.outputs[0].name
    return config.outputs[0].name


def load_dataset(entry: ModelEntry) -> Dataset:
    """The labelled data set named by the model's accuracy target."""
    accuracy = entry.config.accuracy
    if accuracy is None or not accuracy.dataset:
        raise ModelFileError(f"model {entry.name!r} has no accuracy data set (config key `accuracy.dataset`)")
    return load_dataset_file(entry.file(accuracy.dataset), entry.config, accuracy.metric)


def load_dataset_file(path: Path, config: ModelConfig, metric: str) -> Dataset:
    """Read and check a data set file against a model's public signature."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable .npz data set: {exc}") from None
    except EOFError:  # numpy's word for an empty or cut-short file
        raise ModelFileError(f"{path}: not a readable .npz data set: empty or cut short") from None
    if REFERENCE_KEY not in arrays:
        raise ModelFileError(f"{path}: no `{REFERENCE_KEY}` array")
    references = arrays.pop(REFERENCE_KEY)
    given = {key.removeprefix(INPUT_PREFIX) for key in arrays if key.startswith(INPUT_PREFIX)}
    expected = {spec.name for spec in config.inputs}
    if given != expected:
        raise ModelFileError(f"{path}: holds inputs {sorted(given)}, the model takes {sorted(expected)}")
    batched = config.batching.max_batch_size > 0
    columns: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        array = arrays[INPUT_PREFIX + spec.name]
        if array.dtype.kind == "U":
            array = np.array([s.encode("utf-8") for s in array.reshape(-1)], dtype=object).reshape(
                array.shape
            )
        got = oip_datatype(array.dtype)
        rank = len(spec.shape) if batched else len(spec.shape) + 1
        if got != spec.datatype or array.ndim != rank:
            raise ModelFileError(
                f"{path}: input `{spec.name}` is {got} with shape {list(array.shape)}, "
                f"which does not fit the "
                f"model's {spec.datatype} {spec.shape}"
            )
        if len(array) != len(references):
            raise ModelFileError(
                f"{path}: input `{spec.name}` has {len(array)} samples, `reference` has {len(references)}"
            )
        columns[spec.name] = array
    count = len(references)
    if batched:
        inputs = [{name: column[i : i + 1] for name, column in columns.items()} for i in range(count)]
    else:
        inputs = [{name: column[i] for name, column in columns.items()} for i in range(count)]
    if metric == "top1":
        references = references.astype(np.int64)
    return Dataset(
        metric=metric, inputs=inputs, references=references, output=_scored_output(config, metric), path=path
    )
