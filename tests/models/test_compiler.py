"""`kcloud models compile`: artifacts per target, cached by key, gated on accuracy; bad input.

The small `mlp` model (tests/compiled_models.py) compiles in a second; the bundled MiniLM's INT8
build (about a minute: smoothing and sensitivity trials) runs once, marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from compiled_models import write_mlp_model, write_mlp_onnx
from kcloud.cli import app
from kcloud.models.artifacts import (
    ArtifactError,
    ArtifactRefusedError,
    artifact_dir,
    list_artifacts,
    load_artifact,
    with_artifact,
)
from kcloud.models.compiler import compile_model
from kcloud.models.errors import ModelFileError
from kcloud.models.local import LocalRunner
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.models.targets import UnknownTargetError


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    repository.add(write_mlp_model(tmp_path / "src"))
    return repository


def _outputs(entry: ModelEntry, x: np.ndarray) -> np.ndarray:
    return LocalRunner(entry).run([{"x": x}])[0]["y"]


def test_int8_artifact_is_built_recorded_gated_cached_and_served(repo: ModelRepository) -> None:
    entry = repo.get("mlp")
    steps: list[str] = []
    result = compile_model(entry, "cpu-int8", progress=lambda done, total, what: steps.append(what))
    artifact = result.artifact
    assert not result.cached and steps[-1] == "done"
    assert artifact.path == artifact_dir(entry, "cpu-int8") / "model.onnx"
    record = artifact.record
    assert record["source_sha256"] == entry.sha256 and record["target"] == "cpu-int8"
    assert set(record["tools"]) == {"onnxruntime", "onnx"}
    assert record["calibration"]["samples"] == 20 and record["calibration"]["held_out"] == 20
    assert len(record["calibration"]["sha256"]) == 64
    assert record["accuracy"]["passed"] and record["accuracy"]["agreement_min"] >= 0.99
    assert record["build"]["recipe"] == "dynamic" and record["build"]["operators_quantized"] >= 1
    assert record["speed"]["ratio"] > 0
    graph_ops = {node.op_type for node in onnx.load(str(artifact.path)).graph.node}
    assert "MatMulInteger" in graph_ops  # really INT8

    again = compile_model(entry, "cpu-int8")
    assert again.cached and again.artifact.key == artifact.key
    # What a build killed midway leaves is cleared by the next build, and never listed.
    (artifact_dir(entry, "cpu-int8").parent / ".staging-killed").mkdir()
    assert [target for target, _, _ in list_artifacts(entry)] == ["cpu-int8"]
    compile_model(entry, "cpu-fp32")
    assert not list(artifact_dir(entry, "cpu-int8").parent.glob(".staging-*"))

    x = np.random.default_rng(5).normal(size=(3, 16)).astype(np.float32)
    fp32, int8 = _outputs(entry, x), _outputs(with_artifact(entry, artifact), x)
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(fp32, int8)


@pytest.mark.parametrize("target", ["cpu-fp32", "cpu-fp16", "cuda-fp16"])
def test_float_targets_build_and_pass(repo: ModelRepository, target: str) -> None:
    artifact = compile_model(repo.get("mlp"), target).artifact
    assert artifact.record["accuracy"]["passed"]
    if target.endswith("fp16"):
        types = {init.data_type for init in onnx.load(str(artifact.path)).graph.initializer}
        assert onnx.TensorProto.FLOAT16 in types


def test_a_build_that_misses_the_gate_is_refused_and_says_by_how_much(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    repo.add(write_mlp_model(tmp_path / "src", "strict", ratio=1.0))  # only an exact copy passes
    entry = repo.get("strict")
    with pytest.raises(ArtifactRefusedError, match=r"misses the accuracy gate by [0-9.e-]+: ") as refused:
        compile_model(entry, "cpu-int8")
    assert "min cosine to FP32" in str(refused.value) and "kept in FP32" in str(refused.value)
    assert not (artifact_dir(entry, "cpu-int8") / "model.onnx").exists()
    # Asked again, the recorded refusal answers at once; --force tries again.
    with pytest.raises(ArtifactRefusedError, match="was refused"):
        compile_model(entry, "cpu-int8")
    with pytest.raises(ArtifactRefusedError, match="misses the accuracy gate"):
        compile_model(entry, "cpu-int8", force=True)


def test_unknown_target(repo: ModelRepository) -> None:
    with pytest.raises(
        UnknownTargetError, match="unknown compile target 'tpu-int4'; known targets: cpu-fp32"
    ):
        compile_model(repo.get("mlp"), "tpu-int4")


def test_a_model_without_calibration_data(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    repo.add(write_mlp_model(tmp_path / "src", "bare", dataset=False))
    with pytest.raises(ModelFileError, match=r"no calibration data: its config names no `accuracy\.dataset`"):
        compile_model(repo.get("bare"), "cpu-int8")


def test_a_corrupt_artifact_is_refused_until_rebuilt(repo: ModelRepository) -> None:
    entry = repo.get("mlp")
    artifact = compile_model(entry, "cpu-fp32").artifact
    artifact.path.write_bytes(artifact.path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match=r"is corrupt: model\.onnx does not match the digest"):
        compile_model(entry, "cpu-fp32")
    (artifact.path.parent / "build.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable build record"):
        load_artifact(entry, "cpu-fp32")
    rebuilt = compile_model(entry, "cpu-fp32", force=True)
    assert not rebuilt.cached and load_artifact(entry, "cpu-fp32") is not None


def test_an_artifact_of_other_source_weights_is_stale_and_rebuilt(repo: ModelRepository) -> None:
    entry = repo.get("mlp")
    old = compile_model(entry, "cpu-fp32").artifact
    write_mlp_onnx(entry.weights_path, seed=7)  # the source changes under the artifact
    changed = repo.get("mlp")
    assert changed.sha256 != entry.sha256
    [(target, artifact, problem)] = list_artifacts(changed)
    assert target == "cpu-fp32" and artifact is None and "is stale" in (problem or "")
    rebuilt = compile_model(changed, "cpu-fp32").artifact
    assert rebuilt.key != old.key and rebuilt.record["source_sha256"] == changed.sha256


def test_cli_compile_and_artifacts(repo: ModelRepository) -> None:
    runner = CliRunner()
    root = str(repo.root)
    built = runner.invoke(app, ["models", "compile", "mlp", "--target", "cpu-int8", "--repo", root])
    assert built.exit_code == 0, built.output
    assert "built cpu-int8" in built.output and "min cosine to FP32" in built.output
    cached = runner.invoke(app, ["models", "compile", "mlp", "-t", "cpu-int8", "--repo", root, "--json"])
    assert cached.exit_code == 0 and json.loads(cached.output)["cached"] is True
    listed = runner.invoke(app, ["models", "artifacts", "mlp", "--repo", root, "--json"])
    assert [a["target"] for a in json.loads(listed.output)] == ["cpu-int8"]
    shown = runner.invoke(app, ["models", "show", "mlp", "--repo", root, "--json"])
    assert [a["target"] for a in json.loads(shown.output)["artifacts"]] == ["cpu-int8"]
    bad = runner.invoke(app, ["models", "compile", "mlp", "--target", "gpu-int4", "--repo", root])
    assert bad.exit_code == 2 and "unknown compile target 'gpu-int4'" in bad.output
    missing = runner.invoke(app, ["models", "compile", "nope", "--target", "cpu-int8", "--repo", root])
    assert missing.exit_code == 2


@pytest.mark.slow
def test_minilm_int8_passes_the_gate_and_records_its_speed(minilm: ModelEntry) -> None:
    """The goal of issue 20: ≥ 0.99 minimum cosine to FP32 on held-out sentences. The speed ratio
    is recorded, not asserted (this machine is shared): benchmarks/compiler.py measures it."""
    artifact = compile_model(minilm, "cpu-int8").artifact
    gate = artifact.record["accuracy"]
    assert gate["passed"] and gate["agreement_min"] >= 0.99 and gate["samples"] == 50
    assert artifact.record["build"]["smoothing_alpha"] is not None
    assert artifact.record["speed"]["ratio"] is not None


def test_a_generative_model_is_left_to_its_engine(builtin_repository: ModelRepository) -> None:
    if "SmolLM2-135M-Instruct" not in builtin_repository.names():
        pytest.skip("the [llm] extra's SmolLM2 model is not built here")
    with pytest.raises(ModelFileError, match="is a transformers model: its engine compiles it"):
        compile_model(builtin_repository.get("SmolLM2-135M-Instruct"), "cpu-int8")


@pytest.mark.parametrize(
    ("margins", "kept"),
    [
        # a bare pass is not taken while keeping an operator in FP32 could buy the headroom
        ({(): 0.001, ("fc1",): 0.002, ("fc2",): 0.004}, ("fc2",)),
        # nothing reaches the headroom: the widest margin found is taken
        ({(): 0.001, ("fc1",): 0.0002, ("fc2",): 0.0005}, ()),
    ],
)
def test_int8_keeps_operators_in_fp32_until_the_calibration_gate_has_headroom(
    repo: ModelRepository, tmp_path: Path, margins: dict, kept: tuple
) -> None:
    from kcloud.models.gate import GateResult, Judge, split_dataset
    from kcloud.models.quantize import HEADROOM, Int8Builder, Trial

    assert max(margins.values()) < 0.005 and min(margins.values()) < HEADROOM  # the cases straddle it
    entry = repo.get("mlp")
    split = split_dataset(entry)

    class Measured(Int8Builder):
        """The candidates' calibration margins as given (minimum cosine = 0.99 + margin)."""

        def trial(self, alpha: float | None, kept_fp32: tuple[str, ...]) -> Trial:
            result = GateResult("cosine", 0.99, 20, 1.0, 1.0, 0.99 + margins[kept_fp32], "calibration")
            return Trial(alpha, kept_fp32, result, tmp_path / "unused.onnx")

    builder = Measured(entry, tmp_path, Judge(entry, split, held_out=False), split.inputs(split.calibration))
    assert builder.choose().chosen.kept_fp32 == kept
