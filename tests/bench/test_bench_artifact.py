"""`kcloud bench run --target T`: an in-process run of a model's compiled artifact, named in the
result; and the target's bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import run_cli


@pytest.mark.slow
def test_an_accuracy_run_of_the_int8_artifact_names_it(bench_models, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = run_cli(
        "bench",
        "run",
        "-m",
        "digits-cnn",
        "-s",
        "Offline",
        "--mode",
        "accuracy",
        "--quick",
        "--target",
        "cpu-int8",
        "--out",
        str(out),
        "--system",
        "int8",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "(cpu-int8 artifact)" in result.output
    record = json.loads((out / "int8" / "digits-cnn" / "Offline" / "accuracy" / "result.json").read_text())
    artifact = record["environment"]["model"]["artifact"]
    assert artifact["target"] == "cpu-int8" and artifact["accuracy"]["passed"] is True
    assert artifact["path"].endswith("artifacts/cpu-int8/model.onnx")
    assert record["model"]["artifact"].startswith("cpu-int8 ")
    assert record["accuracy"]["passed"] is True


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--target", "tpu-int4"), "unknown compile target 'tpu-int4'"),
        (("--target", "cpu-int8", "--url", "http://127.0.0.1:9"), "--target applies to in-process runs"),
    ],
)
def test_bad_targets_are_refused(bench_models, tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = run_cli(
        "bench", "run", "-m", "digits-cnn", "-s", "Offline", "--quick", "--out", str(tmp_path / "runs"), *args
    )
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()
