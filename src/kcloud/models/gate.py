"""The accuracy gate a compiled artifact must pass: MLPerf's "-99" rule against the FP32 source.

The model's own labelled data set (`accuracy.dataset`) is split in two: the even samples
calibrate and steer the build (quantization ranges, which operators stay in higher precision),
the odd ones judge it. So the figure the gate reports was measured on samples the build never
saw.

An artifact passes when, on the held-out samples:
- its score on the model's metric (top-1, or mean cosine to the references) is at least
  `accuracy.ratio` (0.99) times the FP32 source's score on the same samples; and
- for an embedding model (`cosine`), every sample's output has a cosine similarity of at least
  `ratio` to the source's output for it: a mean hides the few sentences a quantized model
  ruins, the minimum does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kcloud.models.datasets import Dataset, load_dataset, row_cosines
from kcloud.models.errors import ModelFileError
from kcloud.models.repository import ModelEntry

#: Fewest samples a data set needs to be split into calibration and held-out halves.
MIN_SAMPLES = 4


@dataclass(frozen=True)
class Split:
    """The data set's calibration (even) and held-out (odd) samples."""

    dataset: Dataset
    calibration: list[int]
    held_out: list[int]

    def inputs(self, indices: list[int]) -> list[dict[str, np.ndarray]]:
        return [self.dataset.inputs[i] for i in indices]


def split_dataset(entry: ModelEntry) -> Split:
    """The model's data set, split; a clear error when it has none or too little."""
    if entry.config.accuracy is None or not entry.config.accuracy.dataset:
        raise ModelFileError(
            f"model {entry.config.name!r} has no calibration data: its config names no `accuracy.dataset` "
            "(an .npz of samples and references; see docs/models.md)"
        )
    dataset = load_dataset(entry)
    if len(dataset) < MIN_SAMPLES:
        raise ModelFileError(
            f"{dataset.path}: {len(dataset)} samples; calibrating and judging an "
            f"artifact needs at least {MIN_SAMPLES}"
        )
    indices = list(range(len(dataset)))
    return Split(dataset, indices[0::2], indices[1::2])


def run_outputs(
    entry: ModelEntry, weights: Path, inputs: list[dict[str, np.ndarray]], output: str, threads: int = 2
) -> np.ndarray:
    """`weights` (a graph of `entry`'s model) run over `inputs` on the CPU, the scored output stacked."""
    from kcloud.models.local import LocalRunner, text_length

    runner = LocalRunner(dataclasses.replace(entry, weights_path=weights), threads=threads)
    sort = text_length if entry.config.processing.kind == "sentence-embedding" else None
    outputs = runner.run_all(inputs, batch_rows=32, sort_key=sort)
    return np.stack([np.asarray(o[output]).reshape(-1) for o in outputs])


@dataclass(frozen=True)
class GateResult:
    """What the gate measured on one set of samples, and its verdict."""

    metric: str
    ratio: float
    samples: int
    source_score: float
    score: float
    #: Cosine models: the lowest per-sample cosine between the artifact's and the source's outputs.
    agreement_min: float | None
    #: Which samples: "held-out" (the verdict) or "calibration" (steering the build).
    samples_label: str = "held-out"

    def checks(self) -> list[tuple[str, float, float]]:
        """(what, measured, required) of each condition."""
        checks = [(self.metric, self.score, self.ratio * self.source_score)]
        if self.agreement_min is not None:
            checks.append(("min cosine to FP32", self.agreement_min, self.ratio))
        return checks

    @property
    def shortfall(self) -> float:
        """How far the worst condition is from its requirement (0 when all pass)."""
        return max(0.0, *(required - value for _, value, required in self.checks()))

    @property
    def margin(self) -> float:
        """The worst condition's measured minus required (negative when it fails)."""
        return min(value - required for _, value, required in self.checks())

    @property
    def passed(self) -> bool:
        return self.margin >= 0

    def summary(self) -> str:
        parts = [f"{what} {_pair(value, required)}" for what, value, required in self.checks()]
        return f"{'; '.join(parts)} on {self.samples} {self.samples_label} samples"

    def record(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "ratio": self.ratio,
            "samples": self.samples,
            "source_score": self.source_score,
            "score": self.score,
            "agreement_min": self.agreement_min,
            "passed": self.passed,
            "shortfall": self.shortfall,
            "summary": self.summary(),
        }


def _pair(value: float, required: float) -> str:
    """`value ≥ required` (or `<`) with enough decimals that a miss never prints as equal."""
    sign = "≥" if value >= required else "<"
    digits = 4
    while digits < 8 and f"{value:.{digits}f}" == f"{required:.{digits}f}" and value != required:
        digits += 1
    return f"{value:.{digits}f} {sign} {required:.{digits}f}"


class Judge:
    """Scores candidate graphs on one set of samples against the FP32 source's outputs there."""

    def __init__(self, entry: ModelEntry, split: Split, held_out: bool = True, threads: int = 2) -> None:
        self.entry, self.split, self.threads = entry, split, threads
        self.indices = split.held_out if held_out else split.calibration
        self.label = "held-out" if held_out else "calibration"
        self.inputs = split.inputs(self.indices)
        self.references = split.dataset.references[self.indices]
        self.source_outputs = self.outputs(entry.weights_path)
        self.source_score = self._score(self.source_outputs)

    def outputs(self, weights: Path) -> np.ndarray:
        return run_outputs(self.entry, weights, self.inputs, self.split.dataset.output, self.threads)

    def _score(self, outputs: np.ndarray) -> float:
        part = dataclasses.replace(self.split.dataset, references=self.references, inputs=self.inputs)
        return part.score(outputs)

    def judge(self, weights: Path) -> GateResult:
        outputs = self.outputs(weights)
        metric = self.split.dataset.metric
        agreement = float(row_cosines(outputs, self.source_outputs).min()) if metric == "cosine" else None
        ratio = self.entry.config.accuracy.ratio if self.entry.config.accuracy else 0.99
        return GateResult(
            metric, ratio, len(self.indices), self.source_score, self._score(outputs), agreement, self.label
        )
