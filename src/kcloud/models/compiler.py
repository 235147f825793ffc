"""`compile_model`: build (or find cached) the artifact of a model version for a target.

One build: check the request, take the repository's artifact lock, answer from the cache when a
build with the same key (source digest, target, settings) exists, else build in a staging
directory, measure the result against the FP32 source on held-out samples (`kcloud.models.gate`)
and its speed, and move it into place with its record, or record the refusal and raise it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kcloud.models.artifacts import (
    ARTIFACTS_DIR,
    Artifact,
    ArtifactRefusedError,
    cache_key,
    load_artifact,
    save_artifact,
    save_refusal,
    staging_dir,
)
from kcloud.models.errors import ModelFileError
from kcloud.models.gate import Judge, Split, split_dataset
from kcloud.models.graph import file_sha256
from kcloud.models.pipelines import graph_feeds
from kcloud.models.quantize import Int8Builder, Progress, silent, tool_versions
from kcloud.models.repository import ModelEntry, _locked
from kcloud.models.targets import Target, get_target

#: Bumped when a target's build changes, so older artifacts are rebuilt rather than reused.
RECIPE_VERSION = 1
#: Rows of the batch the build's speed check runs, and for how long (one intra-op thread).
SPEED_BATCH = 16
SPEED_SECONDS = 1.5


@dataclass(frozen=True)
class CompileResult:
    artifact: Artifact
    #: True when an earlier build with the same key was reused.
    cached: bool


def _speed(entry: ModelEntry, weights: Path, inputs: list[dict[str, np.ndarray]]) -> float:
    """Samples a second of `weights` on one intra-op thread, over one batch of the samples."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(weights), options, providers=["CPUExecutionProvider"])
    return rows_per_second(session, graph_feeds(entry, inputs, batch=len(inputs))[0], SPEED_SECONDS)


def rows_per_second(session: Any, feed: dict[str, np.ndarray], seconds: float, min_runs: int = 2) -> float:
    """Rows a second `session` computes looping on `feed` for `seconds` (after one warm-up run)."""
    rows = next(iter(feed.values())).shape[0]
    session.run(None, feed)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < min_runs:
        session.run(None, feed)
        runs += 1
    return runs * rows / elapsed


def _optimised_fp32(entry: ModelEntry, out: Path) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Extended, not all: the layout-specific fusions of "all" tie a graph to the build host's CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(entry.weights_path), options, providers=["CPUExecutionProvider"])
    return {"optimisation": "onnxruntime extended (portable fusions)"}


def _fp16(entry: ModelEntry, out: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(entry.weights_path)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"conversion": "onnxruntime.transformers.float16, FP32 inputs and outputs kept"}


def compile_model(
    entry: ModelEntry,
    target_name: str,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> CompileResult:
    """The artifact of `entry` for `target_name`, built unless a matching one is cached.

    `ModelFileError` (and its kinds) for anything the user can fix: an unknown target, a model
    that is not an ONNX graph or has no calibration data, a missing vendor tool, a corrupt or
    stale artifact; `ArtifactRefusedError` when the build misses the accuracy gate.
    """
    target = get_target(target_name)
    if entry.config.platform != "onnxruntime":
        raise ModelFileError(
            f"model {entry.config.name!r} is a {entry.config.platform} model: its engine compiles it "
            "(vLLM, optimum-rbln, furiosa-llm); `kcloud models compile` builds ONNX graphs"
        )
    settings = {"recipe_version": RECIPE_VERSION}
    key = cache_key(entry.sha256, target.name, settings)
    with _locked(entry.path / ARTIFACTS_DIR / ".lock"):
        if not force and (cached := load_artifact(entry, target.name, key)) is not None:
            return CompileResult(cached, cached=True)
        split = split_dataset(entry)  # before any work: no calibration data is the user's to fix
        staging = staging_dir(entry)
        try:
            return CompileResult(_build(entry, target, key, settings, split, staging, progress), cached=False)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _build(
    entry: ModelEntry,
    target: Target,
    key: str,
    settings: dict[str, Any],
    split: Split,
    staging: Path,
    progress: Progress,
) -> Artifact:
    started = time.perf_counter()
    work = staging / "work"
    work.mkdir()
    out = staging / target.file_name
    record: dict[str, Any] = {
        "key": key,
        "target": target.name,
        "precision": target.precision,
        "runs_on": target.runs_on,
        "description": target.description,
        "settings": settings,
        "model": entry.config.name,
        "version": entry.version,
        "tools": tool_versions(),
        "calibration": {
            "dataset": str(split.dataset.path.name),
            "sha256": file_sha256(split.dataset.path),
            "samples": len(split.calibration),
            "held_out": len(split.held_out),
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "cpu-fp32": lambda: _optimised_fp32(entry, out),
        "cpu-fp16": lambda: _fp16(entry, out),
        "cuda-fp16": lambda: _fp16(entry, out),
        "cpu-int8": lambda: _int8(entry, split, work, out, progress),
    }
    if target.name not in builders:
        from kcloud.models.vendor_compilers import compile_for_vendor

        progress(0, 1, f"compiling with {target.tool}")
        record["build"] = compile_for_vendor(
            entry, target, out, graph_feeds(entry, split.inputs(split.calibration))
        )
    else:
        record["build"] = builders[target.name]()
    shutil.rmtree(work, ignore_errors=True)
    if target.runs_on_host:
        progress(0, 1, "judging on held-out samples")
        gate = Judge(entry, split).judge(out)
        # The gate runs every target's graph on the host's CPU provider (LocalRunner), a GPU's too.
        record["accuracy"] = {**gate.record(), "measured_on": "onnxruntime CPU provider on the build host"}
        speed_inputs = split.inputs(split.calibration[:SPEED_BATCH])
        source_speed, speed = (
            _speed(entry, entry.weights_path, speed_inputs),
            _speed(entry, out, speed_inputs),
        )
        record["speed"] = {
            "source_samples_per_s": source_speed,
            "samples_per_s": speed,
            "ratio": speed / source_speed,
            "batch": len(speed_inputs),
            "threads": 1,
            "measured_on": "the build host's CPU (onnxruntime CPU provider)",
        }
        if not gate.passed:
            reason = (
                f"{target.name} misses the accuracy gate by {gate.shortfall:.2g}: {gate.summary()}"
                + _kept_words(record["build"])
            )
            record.update(reason=reason, seconds=time.perf_counter() - started)
            save_refusal(entry, target.name, staging, record)
            raise ArtifactRefusedError(
                f"model {entry.config.name} version {entry.version}: {reason}; no artifact was installed"
            )
    else:
        record["accuracy"] = None
        record["accuracy_note"] = f"not measured: {target.runs_on} is not on this host"
    record["seconds"] = time.perf_counter() - started
    progress(1, 1, "done")
    return save_artifact(entry, target.name, staging, target.file_name, record)


def _kept_words(build: dict[str, Any]) -> str:
    kept = build.get("kept_fp32")
    if kept is None:
        return ""
    return (
        f" (best found: {build['operators_quantized']} operators in INT8, {len(kept)} kept in FP32, "
        f"smoothing α={build['smoothing_alpha']})"
    )


def _int8(entry: ModelEntry, split: Split, work: Path, out: Path, progress: Progress) -> dict[str, Any]:
    judge = Judge(entry, split, held_out=False)
    builder = Int8Builder(entry, work, judge, split.inputs(split.calibration), progress)
    build = builder.choose()
    shutil.copyfile(build.chosen.path, out)
    return {
        **build.settings(),
        "calibration_gate": build.chosen.result.record(),
        "trials": [t.record() for t in build.trials],
    }
