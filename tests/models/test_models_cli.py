"""`kcloud models ...` as a user runs it: tables, JSON, and one red line for mistakes."""

from __future__ import annotations

import json
from pathlib import Path

from model_files import affine_dir
from typer.testing import CliRunner

from kcloud.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["models", *args])


def test_list_shows_the_bundled_models(builtin_repository) -> None:
    result = _run("list", "--repo", str(builtin_repository.root))
    assert result.exit_code == 0, result.output
    for text in (
        "all-MiniLM-L6-v2",
        "digits-cnn",
        "text BYTES[-1]",
        "embedding FP32[-1, 384]",
        "cosine ≥",
        "top1 ≥",
    ):
        assert text in result.output


def test_show_json(builtin_repository) -> None:
    result = _run("show", "digits-cnn", "--json", "--repo", str(builtin_repository.root))
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["name"] == "digits-cnn" and record["config"]["accuracy"]["metric"] == "top1"
    assert record["build"]["top1"] == record["config"]["accuracy"]["reference"]
    assert len(record["sha256"]) == 64


def test_show_text_and_unknown(builtin_repository) -> None:
    assert "sha256" in _run("show", "all-MiniLM-L6-v2", "--repo", str(builtin_repository.root)).output
    result = _run("show", "resnet50", "--repo", str(builtin_repository.root))
    assert result.exit_code == 2
    assert "error: model 'resnet50' not found" in result.output and "Traceback" not in result.output


def test_add_list_remove(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    empty = _run("list", "--repo", repo)
    assert empty.exit_code == 0 and "kcloud models build" in empty.output
    added = _run("add", str(affine_dir(tmp_path / "src")), "--name", "lin", "--repo", repo)
    assert added.exit_code == 0 and "added lin version 1" in added.output
    listed = _run("list", "--repo", repo)
    assert "lin" in listed.output and "x FP32[-1, 4]" in listed.output
    assert _run("remove", "lin", "--yes", "--repo", repo).exit_code == 0
    assert "lin" not in _run("list", "--repo", repo).output


def test_add_garbage_is_one_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00\x01\x02 garbage")
    result = _run("add", str(garbage), "--repo", str(tmp_path / "repo"))
    assert result.exit_code == 2
    assert "model.onnx" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "repo" / "model").exists()


def test_build_unknown_and_noop(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    bad = _run("build", "resnet", "--repo", repo)
    assert bad.exit_code == 2 and "unknown built-in model" in bad.output
    good = _run("build", "noop", "--repo", repo)
    assert good.exit_code == 0 and "ready noop version 1" in good.output
