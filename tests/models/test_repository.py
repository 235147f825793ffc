"""The model repository on a real directory: layout, checks on add and load, bad model files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from model_files import affine_config, affine_dir, write_affine

from kcloud.models.configfile import load_config, save_config
from kcloud.models.errors import ModelFileError, ModelNotFoundError
from kcloud.models.graph import SIGNATURE_CACHE, file_sha256
from kcloud.models.repository import ModelRepository, default_repository_path


def _contents(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


def test_default_path_is_under_kcloud_home(kcloud_home: Path) -> None:
    assert default_repository_path() == kcloud_home / "models"


def test_add_directory_then_get_and_list(repo: ModelRepository, tmp_path: Path) -> None:
    entry = repo.add(affine_dir(tmp_path / "src"))
    assert (entry.name, entry.version) == ("affine", 1)
    assert entry.weights_path == repo.root / "affine" / "1" / "model.onnx"
    assert entry.model_dir == repo.root / "affine" and entry.path == repo.root / "affine" / "1"
    assert len(entry.sha256) == 64
    # FLOPs and weight bytes filled in from the graph: Gemm 1x4 @ 4x3 -> 2*3*4; 12+3 floats
    assert entry.config.flops_per_sample == 24.0
    assert entry.config.memory_bytes == 15 * 4
    assert [e.name for e in repo.list()] == ["affine"]
    assert repo.get("affine") == repo.get("affine", 1)


def test_add_same_name_adds_a_version(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add(affine_dir(tmp_path / "a"))
    second = repo.add(affine_dir(tmp_path / "b"))
    assert second.version == 2
    assert repo.versions("affine") == [1, 2]
    assert repo.get("affine").version == 2
    assert [e.version for e in repo.list(all_versions=True)] == [1, 2]


def test_add_single_onnx_infers_the_signature(repo: ModelRepository, tmp_path: Path) -> None:
    onnx_file = write_affine(tmp_path / "my model.onnx", features=5)
    entry = repo.add(onnx_file)
    assert entry.name == "my-model"
    config = entry.config
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("x", "FP32", [-1, 5])]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [("y", "FP32", [-1, 3])]
    assert config.batching.max_batch_size > 0
    assert config.flops_per_sample == 2 * 5 * 3
    # a fixed batch dimension cannot be batched: inferred config turns batching off
    fixed = repo.add(write_affine(tmp_path / "fixed.onnx", batch=1), name="fixed")
    assert fixed.config.batching.max_batch_size == 0


def test_add_single_onnx_with_config_and_name(repo: ModelRepository, tmp_path: Path) -> None:
    onnx_file = write_affine(tmp_path / "m.onnx")
    save_config(affine_config("from-config"), tmp_path / "cfg.toml")
    entry = repo.add(onnx_file, name="renamed", config=tmp_path / "cfg.toml")
    assert entry.name == "renamed" and entry.config.name == "renamed"
    assert load_config(repo.root / "renamed" / "config.toml").name == "renamed"


def test_remove(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add(affine_dir(tmp_path / "src"))
    repo.remove("affine")
    assert repo.list() == [] and not (repo.root / "affine").exists()
    with pytest.raises(ModelNotFoundError):
        repo.remove("affine")


def test_unknown_model_or_version(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="empty"):
        repo.get("nothing")
    repo.add(affine_dir(tmp_path / "src"))
    with pytest.raises(ModelNotFoundError, match=r"'nothing' not found.*it has: affine"):
        repo.get("nothing")
    with pytest.raises(ModelNotFoundError, match="no version 7; versions: 1"):
        repo.get("affine", 7)
    with pytest.raises(ModelNotFoundError):
        repo.get("../repo")


# ------------------------------------------------------------------------------ bad model files
def _bad_add(repo: ModelRepository, source: Path, match: str, **kwargs: object) -> None:
    before = _contents(repo.root)
    with pytest.raises(ModelFileError, match=match):
        repo.add(source, **kwargs)  # type: ignore[arg-type]
    leftovers = [p for p in _contents(repo.root) if p not in before and not p.startswith(".")]
    assert leftovers == [], "a failed add must leave nothing behind"
    assert not any(p.startswith(".staging") for p in _contents(repo.root))


def test_toml_syntax_error(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    (source / "config.toml").write_text('name = "affine"\ninputs = [\n')
    _bad_add(repo, source, r"config\.toml: TOML syntax error")


def test_unknown_key(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    text = (source / "config.toml").read_text().replace("[batching]", "[batching]\nmax_batch = 4")
    (source / "config.toml").write_text(text)
    _bad_add(repo, source, r"config\.toml: key `batching\.max_batch`: unknown key")


def test_wrong_type(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    text = (source / "config.toml").read_text().replace("max_batch_size = 8", 'max_batch_size = "eight"')
    (source / "config.toml").write_text(text)
    _bad_add(repo, source, r"key `batching\.max_batch_size`: .*integer.*'eight'")


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("cpu = 9", r"preferred_batch_size\.cpu = 9: must be between 1 and max_batch_size \(8\)"),
        ("cpu = 0", r"preferred_batch_size\.cpu = 0: must be between 1"),
        ("tpu = 4", r"key `batching\.preferred_batch_size\.tpu`"),
    ],
)
def test_bad_preferred_batch_size(repo: ModelRepository, tmp_path: Path, table: str, match: str) -> None:
    source = affine_dir(tmp_path / "src")
    text = (source / "config.toml").read_text().replace(
        "[batching]", f"[batching]\npreferred_batch_size = {{ {table} }}")
    (source / "config.toml").write_text(text)
    _bad_add(repo, source, match)


def test_preferred_batch_size_is_per_device_kind(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    text = (source / "config.toml").read_text().replace(
        "[batching]", "[batching]\npreferred_batch_size = { cpu = 4 }")
    (source / "config.toml").write_text(text)
    batching = repo.add(source).config.batching
    assert (batching.batch_rows("cpu"), batching.batch_rows("gpu")) == (4, 8)


@pytest.mark.parametrize("dim", [0, -2])
def test_non_positive_dims(repo: ModelRepository, tmp_path: Path, dim: int) -> None:
    source = affine_dir(tmp_path / "src")
    text = (source / "config.toml").read_text().replace("    4,\n", f"    {dim},\n")
    (source / "config.toml").write_text(text)
    _bad_add(repo, source, r"key `inputs\[0\]\.shape`: dimensions must be positive or -1")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]},
            r"input `input` is not a graph input",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 4]}]},
            r"config datatype INT64, graph has FP32",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4, 1]}]},
            r"config rank 3 .* graph rank 2",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]},
            r"dimension 1 is 5 .* fixed to 4",
        ),
        (
            {"outputs": [{"name": "z", "datatype": "FP32", "shape": [-1, 3]}]},
            r"output `z` is not a graph output",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]},
            r"needs a leading -1 batch dimension",
        ),
    ],
)
def test_signature_mismatch(repo: ModelRepository, tmp_path: Path, change: dict, match: str) -> None:
    source = affine_dir(tmp_path / "src")
    save_config(affine_config(**change), source / "config.toml")
    _bad_add(repo, source, r"config does not match the graph[\s\S]*" + match)


def test_garbage_onnx(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    (source / "1" / "model.onnx").write_bytes(b"\x00\xffnot an onnx file at all\x13\x37" * 50)
    _bad_add(repo, source, r"1/model\.onnx: not (a readable ONNX|an ONNX) model")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"PK\x03\x04 definitely a zip, not a protobuf")
    _bad_add(repo, garbage, r"garbage\.onnx: (not|invalid)")


def test_missing_model_onnx(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    (source / "1" / "model.onnx").unlink()
    _bad_add(repo, source, r"1/model\.onnx: model file not found")
    shutil.rmtree(source / "1")
    _bad_add(repo, source, r"no model\.onnx")


def test_missing_config_and_wrong_path(repo: ModelRepository, tmp_path: Path) -> None:
    source = affine_dir(tmp_path / "src")
    (source / "config.toml").unlink()
    _bad_add(repo, source, r"config file not found")
    _bad_add(repo, tmp_path / "nowhere", r"no such file or directory")
    (tmp_path / "notes.txt").write_text("hi")
    _bad_add(repo, tmp_path / "notes.txt", r"expected a model directory or an \.onnx file")


def test_sentence_embedding_needs_its_tokenizer(repo: ModelRepository, minilm, tmp_path: Path) -> None:
    source = tmp_path / "text-model"
    (source / "1").mkdir(parents=True)
    (source / "1" / "model.onnx").symlink_to(minilm.weights_path)
    save_config(
        minilm.config.model_copy(update={"name": "text-model", "accuracy": None}), source / "config.toml"
    )
    _bad_add(repo, source, r"key `processing\.tokenizer`: file .*tokenizer\.json not found")
    (source / "tokenizer.json").write_text("{ this is not a tokenizer")
    _bad_add(repo, source, r"tokenizer\.json: not a readable HF tokenizers file")


def test_new_version_must_fit_the_existing_signature(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add(affine_dir(tmp_path / "a", features=4))
    _bad_add(repo, affine_dir(tmp_path / "b", features=6), r"dimension 1 is 6 .* fixed to 4")
    assert repo.versions("affine") == [1]


def test_broken_model_on_disk_is_refused_on_load_and_skipped_by_list(
    repo: ModelRepository, tmp_path: Path
) -> None:
    repo.add(affine_dir(tmp_path / "good"))
    repo.add(
        affine_dir(
            tmp_path / "bad",
        ),
        name="bad",
    )
    config_path = repo.root / "bad" / "config.toml"
    config_path.write_text(config_path.read_text().replace('name = "x"', 'name = "input"'))
    with pytest.raises(ModelFileError, match=r"bad/config\.toml: config does not match the graph"):
        repo.get("bad")
    assert [e.name for e in repo.list()] == ["affine"]
    assert "input `input` is not a graph input" in repo.problems()["bad"]


def test_corrupted_onnx_on_disk_is_refused_on_load(repo: ModelRepository, tmp_path: Path) -> None:
    entry = repo.add(affine_dir(tmp_path / "src"))
    (entry.path / SIGNATURE_CACHE).unlink(missing_ok=True)
    entry.weights_path.write_bytes(b"garbage" * 100)
    with pytest.raises(ModelFileError, match=r"model\.onnx: not"):
        repo.get("affine")


def test_add_flat_directory(repo: ModelRepository, tmp_path: Path) -> None:
    source = tmp_path / "flat"
    write_affine(source / "model.onnx")
    save_config(affine_config("flat"), source / "config.toml")
    (source / "README.txt").write_text("support files travel with the model")
    entry = repo.add(source)
    assert entry.version == 1 and (entry.model_dir / "README.txt").is_file()


def test_add_over_a_leftover_directory(repo: ModelRepository, tmp_path: Path) -> None:
    (repo.root / "affine").mkdir(parents=True)
    (repo.root / "affine" / "config.toml").write_text('name = "affine"\n')
    _bad_add(repo, affine_dir(tmp_path / "src"), r"already exists but holds no usable model version")
    assert repo.add(affine_dir(tmp_path / "src"), replace=True).version == 1


# ------------------------------------------------------------------- transformers checkpoints
def _checkpoint(root: Path, name: str = "tiny-lm") -> Path:
    """A minimal Hugging Face checkpoint (no torch needed) with a transformers config.toml beside it."""
    import json

    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    root.mkdir(parents=True)
    hf_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (root / "config.json").write_text(json.dumps(hf_config))
    tensors = {"embed": np.zeros((8, 4), np.float16), "norm": np.ones(4, np.float16)}
    save_file(tensors, root / "model.safetensors")
    Tokenizer(WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]")).save(str(root / "tokenizer.json"))
    (root / "chat_template.jinja").write_text("{{ messages }}")
    (root / "config.toml").write_text(
        f'name = "{name}"\nplatform = "transformers"\n\n'
        "[generation]\ncontext_length = 512\nkv_cache_bytes = 1000\n"
    )
    return root


def test_add_a_hugging_face_checkpoint_directory(repo: ModelRepository, tmp_path: Path) -> None:
    entry = repo.add(_checkpoint(tmp_path / "hf"))
    assert (entry.name, entry.version, entry.config.platform) == ("tiny-lm", 1, "transformers")
    assert entry.weights_path == repo.root / "tiny-lm" / "1" / "model.safetensors"
    assert entry.sha256 == file_sha256(entry.weights_path)
    assert sorted(p.name for p in entry.path.iterdir()) == [
        "chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json",
    ]
    # filled in from the safetensors header: 36 fp16 parameters, plus the KV cache
    assert entry.config.memory_bytes == 36 * 2 + 1000
    assert entry.config.generation is not None and entry.config.generation.flops_per_token == 72.0
    assert repo.get("tiny-lm") == entry and [e.name for e in repo.list()] == ["tiny-lm"]


def test_checkpoint_versions_and_platform_mix(repo: ModelRepository, tmp_path: Path) -> None:
    source = tmp_path / "versioned"
    _checkpoint(source / "1")
    shutil.move(source / "1" / "config.toml", source / "config.toml")
    assert repo.add(source).version == 1
    assert repo.add(_checkpoint(tmp_path / "again")).version == 2
    onnx_model = affine_dir(tmp_path / "onnx", name="tiny-lm")
    _bad_add(repo, onnx_model, r"onnxruntime model cannot be a new version")
    assert repo.versions("tiny-lm") == [1, 2]


@pytest.mark.parametrize(
    ("missing", "match"),
    [
        ("model.safetensors", r"hf/model\.safetensors \(nor any \*\.safetensors shard\): not found"),
        ("tokenizer.json", r"hf/tokenizer\.json: not found"),
        ("config.json", r"hf/config\.json: not found"),
    ],
)
def test_incomplete_checkpoint_is_refused(
    repo: ModelRepository, tmp_path: Path, missing: str, match: str
) -> None:
    source = _checkpoint(tmp_path / "hf")
    (source / missing).unlink()
    _bad_add(repo, source, match)


def test_broken_checkpoint_files(repo: ModelRepository, tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "hf")
    (source / "model.safetensors").write_bytes(b"\xff" * 64)
    _bad_add(repo, source, r"model\.safetensors: not a readable safetensors file")
    source = _checkpoint(tmp_path / "hf2")
    (source / "config.json").write_text('{"hidden_size": 4}')
    _bad_add(repo, source, r"config\.json: not a Hugging Face model config")
    source = _checkpoint(tmp_path / "hf3")
    (source / "config.toml").write_text('name = "tiny-lm"\nplatform = "transformers"\n')
    _bad_add(repo, source, r"needs a `generation` section")


def test_checkpoint_broken_on_disk_is_refused_on_load(repo: ModelRepository, tmp_path: Path) -> None:
    entry = repo.add(_checkpoint(tmp_path / "hf"))
    (entry.path / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match=r"tiny-lm/1/tokenizer\.json: not found"):
        repo.get("tiny-lm")
    assert repo.list() == [] and "tokenizer.json" in repo.problems()["tiny-lm"]
