"""ensure_builtin_models: builds what is missing, once; refuses what it cannot build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_files import affine_config, write_affine

from kcloud.models.builtin import BUILD_RECORD, DEFAULT_MODELS, NOOP, builtin_names, ensure_builtin_models
from kcloud.models.configfile import save_config
from kcloud.models.errors import BuildError
from kcloud.models.repository import ModelRepository


def test_default_set_is_the_two_real_models() -> None:
    assert DEFAULT_MODELS == ("all-MiniLM-L6-v2", "digits-cnn")
    assert NOOP in builtin_names() and NOOP not in DEFAULT_MODELS


def test_bundled_models_are_ready(builtin_repository: ModelRepository) -> None:
    entries = ensure_builtin_models(builtin_repository, progress=False)
    assert [e.name for e in entries] == list(DEFAULT_MODELS)
    for entry in entries:
        record = json.loads((entry.path / BUILD_RECORD).read_text())
        assert record["builder"] == entry.name and record["build_seconds"] > 0
        print(
            f"\n{entry.name}: built in {record['build_seconds']} s; "
            f"flops/sample {entry.config.flops_per_sample:.4g}; "
            f"accuracy reference {entry.config.accuracy.reference:.6f}"
        )


def test_noop_builds_on_request_and_only_once(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    [entry] = ensure_builtin_models(repo, include=(NOOP,), progress=False)
    assert entry.name == NOOP and entry.version == 1
    assert [(t.name, t.datatype, t.shape) for t in entry.config.inputs] == [("input", "FP32", [-1, 16])]
    assert entry.config.batching.max_batch_size == 64
    assert entry.config.flops_per_sample == 0.0 and entry.config.memory_bytes == 0
    record = (entry.path / BUILD_RECORD).read_bytes()
    mtime = entry.weights_path.stat().st_mtime_ns
    [again] = ensure_builtin_models(repo, include=(NOOP,), progress=False)
    assert again == entry
    assert (again.path / BUILD_RECORD).read_bytes() == record
    assert again.weights_path.stat().st_mtime_ns == mtime
    assert repo.names() == [NOOP]


def test_a_stale_build_is_rebuilt(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    [entry] = ensure_builtin_models(repo, include=(NOOP,), progress=False)
    record_path = entry.path / BUILD_RECORD
    record = json.loads(record_path.read_text())
    record["builder_version"] = 0
    record_path.write_text(json.dumps(record))
    [rebuilt] = ensure_builtin_models(repo, include=(NOOP,), progress=False)
    assert json.loads((rebuilt.path / BUILD_RECORD).read_text())["builder_version"] == 1


def test_a_users_own_model_under_a_builtin_name_is_left_alone(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    source = tmp_path / "mine"
    write_affine(source / "1" / "model.onnx")
    save_config(affine_config(NOOP), source / "config.toml")
    mine = repo.add(source)
    assert ensure_builtin_models(repo, include=(NOOP,), progress=False) == [mine]


def test_unknown_or_broken_builtins_are_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(
        BuildError, match=r"unknown built-in model\(s\) \['resnet'\]; built-ins: all-MiniLM-L6-v2"
    ):
        ensure_builtin_models(repo, include=("resnet",), progress=False)
    [entry] = ensure_builtin_models(repo, include=(NOOP,), progress=False)
    (entry.model_dir / "config.toml").write_text("name = ")
    with pytest.raises(BuildError, match=r"'noop' .* is broken .*kcloud models remove noop"):
        ensure_builtin_models(repo, include=(NOOP,), progress=False)
