"""INT8 for the CPU, earned by measurement: ONNX Runtime's quantizer, steered by the accuracy gate.

Plain INT8 ruins some of what MiniLM says (dynamic quantization of every MatMul: minimum cosine
to FP32 0.958 over its 100 parity sentences; with the embedding table quantized too, lower).
Three measured choices win it back, each taken on the calibration samples only:

1. **Recipe by graph.** A transformer (MatMuls with weights) gets dynamic quantization: INT8
   weights per output channel, activations quantized per batch at run time, which follows the
   ranges of each batch. A convolutional network gets static QDQ quantization with per-channel
   weights and activation ranges calibrated on the samples. Only the compute-heavy operators
   (MatMul, Gemm, Conv) are quantized; embedding lookups and normalisations stay in FP32.
2. **Smoothing** (SmoothQuant, Xiao et al. 2023) for the dynamic recipe: a few input channels of
   a transformer's activations are far larger than the rest, and one scale per tensor wastes
   the INT8 range on them. Each weight MatMul's input is divided per channel by
   `s = amax(x)^α / amax(w)^(1-α)` and its weight rows multiplied by the same `s`, an identity in
   FP32 that evens out what INT8 has to hold. α is tried from `SMOOTHING_ALPHAS` and the best
   measured one kept.
3. **Sensitive operators stay in FP32.** Unless the gate passes on the calibration samples with
   `HEADROOM` to spare, each quantized operator is left in FP32 alone and the gain measured;
   operators are then kept in FP32 in order of gain until it does, or half of them are (then the
   candidate with the widest margin is taken, and the held-out gate judges it). The headroom is
   there because the held-out samples are not the calibration ones: on an AVX2 host without VNNI
   (AMD EPYC), MiniLM's held-out minimum cosine came out up to 0.004 below the calibration one
   (0.9886 held out at 0.9925 calibrated), so a build that only just passed calibration failed
   the gate there while it passed on an Intel Xeon.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kcloud.models.gate import GateResult, Judge
from kcloud.models.pipelines import graph_feeds
from kcloud.models.repository import ModelEntry

#: Operators quantized: where the arithmetic is.
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: Smoothing strengths tried for the dynamic recipe (None: no smoothing).
SMOOTHING_ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.7, 0.85)
#: At most this share of the quantizable operators may be kept in FP32 before the build is refused.
MAX_KEPT_SHARE = 0.5
#: How far above the gate a candidate must score on the calibration samples to be taken at once
#: (measured: held-out minimum cosine up to 0.004 below the calibration one; see 3. above).
HEADROOM = 0.003
#: Rows per calibration batch.
CALIBRATION_BATCH = 8

#: (step done, steps planned, what) — a build's progress, for a progress bar.
Progress = Callable[[int, int, str], None]


def silent(done: int, total: int, what: str) -> None:
    """The progress callback that shows nothing."""


def _weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The quantizable operators whose second input is a weight (an initializer)."""
    weights = {init.name for init in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in weights and n.name
    ]


@dataclass
class Trial:
    """One candidate build and what the gate measured of it on the calibration samples."""

    alpha: float | None
    kept_fp32: tuple[str, ...]
    result: GateResult
    #: The candidate graph, in the build's work directory.
    path: Path

    def record(self) -> dict[str, Any]:
        return {
            "smoothing_alpha": self.alpha,
            "kept_fp32": list(self.kept_fp32),
            "margin": self.result.margin,
            "summary": self.result.summary(),
        }


@dataclass
class Int8Build:
    """The chosen INT8 graph (one of the trials) and how it was chosen."""

    recipe: str
    #: How many operators could be quantized (those with weights, of `QUANTIZED_OPS`).
    operators: int
    chosen: Trial
    trials: list[Trial] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "smoothing_alpha": self.chosen.alpha,
            "kept_fp32": list(self.chosen.kept_fp32),
            "operators_quantized": self.operators - len(self.chosen.kept_fp32),
            "operator_types": list(QUANTIZED_OPS),
            "weights": "int8 per channel",
            "activations": (
                "uint8 per tensor, per batch at run time"
                if self.recipe == "dynamic"
                else "uint8 per tensor, calibrated (min/max)"
            ),
        }


class Int8Builder:
    """Builds INT8 candidates of one model in a work directory and measures them."""

    def __init__(
        self,
        entry: ModelEntry,
        workdir: Path,
        judge: Judge,
        calibration: list[dict[str, np.ndarray]],
        progress: Progress = silent,
    ) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.entry, self.workdir, self.judge, self.progress = entry, workdir, judge, progress
        self.feeds = graph_feeds(entry, calibration, CALIBRATION_BATCH)
        self.prepared = workdir / "prepared.onnx"
        quant_pre_process(str(entry.weights_path), str(self.prepared), skip_symbolic_shape=True)
        model = onnx.load(str(self.prepared))
        self.nodes = [n.name for n in _weight_nodes(model)]
        self.recipe = "static-qdq" if any(n.op_type == "Conv" for n in model.graph.node) else "dynamic"
        self._amax: dict[str, np.ndarray] | None = None
        self._count = 0

    # ------------------------------------------------------------------ building one candidate
    def _activation_amax(self) -> dict[str, np.ndarray]:
        """Per input channel, the largest |value| each weight MatMul's input takes on the samples."""
        if self._amax is None:
            import onnxruntime as ort

            probe = onnx.load(str(self.prepared))
            names = sorted({n.input[0] for n in _weight_nodes(probe) if n.op_type == "MatMul"})
            present = {o.name for o in probe.graph.output}
            probe.graph.output.extend(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                for name in names
                if name not in present
            )
            path = self.workdir / "probe.onnx"
            onnx.save(probe, str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            amax: dict[str, np.ndarray] = {}
            for feed in self.feeds:
                for name, value in zip(names, session.run(names, feed), strict=True):
                    channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                    amax[name] = np.maximum(amax.get(name, channel_max), channel_max)
            self._amax = amax
        return self._amax

    def _smoothed(self, alpha: float) -> Path:
        """The prepared graph with each weight MatMul's input smoothed at strength `alpha`."""
        path = self.workdir / f"smoothed-{alpha}.onnx"
        if path.exists():
            return path
        amax = self._activation_amax()
        model = onnx.load(str(self.prepared))
        inits = {init.name: init for init in model.graph.initializer}
        uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for node in [n for n in _weight_nodes(model) if n.op_type == "MatMul"]:
            weight = numpy_helper.to_array(inits[node.input[1]])
            x_max = amax.get(node.input[0])
            if (
                weight.ndim != 2
                or uses[node.input[1]] != 1
                or x_max is None
                or x_max.shape[0] != weight.shape[0]
            ):
                continue  # a shared or non-matrix weight cannot take a per-node scale
            scale = np.maximum(x_max, 1e-5) ** alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (
                1 - alpha
            )
            scale = np.clip(scale, 1e-3, 1e3).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            inverse = f"{node.name}.smooth_inverse"
            model.graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), inverse))
            smoothed = f"{node.name}.smoothed_input"
            position = list(model.graph.node).index(node)
            model.graph.node.insert(
                position,
                helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}.smooth"),
            )
            node.input[0] = smoothed
        onnx.save(model, str(path))
        return path

    def build(self, alpha: float | None, kept_fp32: tuple[str, ...]) -> Path:
        """One INT8 candidate: smoothing `alpha` (dynamic recipe), `kept_fp32` left unquantized."""
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        self._count += 1
        out = self.workdir / f"candidate-{self._count}.onnx"
        source = self._smoothed(alpha) if alpha is not None else self.prepared
        if self.recipe == "dynamic":
            quantize_dynamic(
                str(source),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(kept_fp32),
                extra_options={"MatMulConstBOnly": True},
            )
        else:
            feeds = iter(self.feeds)

            class Reader(CalibrationDataReader):
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(feeds, None)

            quantize_static(
                str(source),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(kept_fp32),
                calibrate_method=CalibrationMethod.MinMax,
            )
        return out

    def trial(self, alpha: float | None, kept_fp32: tuple[str, ...]) -> Trial:
        path = self.build(alpha, kept_fp32)
        return Trial(alpha, kept_fp32, self.judge.judge(path), path)

    # ------------------------------------------------------------------ choosing by measurement
    def choose(self) -> Int8Build:
        """The first candidate that passes the gate on the calibration samples with `HEADROOM` to
        spare, with the most operators in INT8; when none does, the one with the widest margin
        (the caller refuses it by the held-out gate if it misses)."""
        alphas = SMOOTHING_ALPHAS if self.recipe == "dynamic" else (None,)
        max_kept = int(len(self.nodes) * MAX_KEPT_SHARE)
        planned = len(alphas) + len(self.nodes) + max_kept
        trials: list[Trial] = []

        def run(alpha: float | None, kept: tuple[str, ...], what: str) -> Trial:
            trial = self.trial(alpha, kept)
            trials.append(trial)
            self.progress(len(trials), planned, what)
            return trial

        best = max(
            (run(alpha, (), f"smoothing α={alpha}") for alpha in alphas), key=lambda t: t.result.margin
        )
        if best.result.margin < HEADROOM and self.nodes:
            gains = {
                node: run(best.alpha, (node,), f"sensitivity of {node}").result.margin - best.result.margin
                for node in self.nodes
            }
            order = sorted(self.nodes, key=lambda node: -gains[node])
            for count in range(1, max_kept + 1):
                candidate = run(best.alpha, tuple(order[:count]), f"{count} operator(s) kept in FP32")
                if candidate.result.margin > best.result.margin:
                    best = candidate
                if best.result.margin >= HEADROOM:
                    break
        self.progress(planned, planned, "chosen")
        return Int8Build(self.recipe, len(self.nodes), best, trials)


def tool_versions() -> dict[str, str]:
    """Versions of the tools an ONNX Runtime build uses, for the build record."""
    return {name: importlib.metadata.version(name) for name in ("onnxruntime", "onnx")}
