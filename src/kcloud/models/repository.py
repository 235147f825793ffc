"""The model repository on disk, laid out like Triton's.

```
<repo>/<model>/config.toml          the contract (ModelConfig)
<repo>/<model>/tokenizer.json       processing and data files the config names
<repo>/<model>/<version>/model.onnx one directory per version, positive integers
```

A generative model (`platform = "transformers"`) has a Hugging Face checkpoint in each version
directory instead: `config.json`, `model.safetensors` (or several `*.safetensors` shards) and
`tokenizer.json`, with whatever else the engine reads (chat template, generation config). It is
the directory an LLM engine loads, so it is copied whole.

Every model is checked when it is added and again when it is loaded (the config against the
ONNX graph or the checkpoint's files, the files it names), so a broken model is refused by name
instead of failing a request later. Adding stages everything in a hidden directory of the
repository and renames it into place, so a failed or interrupted `add` leaves nothing half-copied.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from kcloud.home import kcloud_home
from kcloud.models.config import ModelConfig
from kcloud.models.configfile import CONFIG_FILE, config_from_dict, load_config, save_config
from kcloud.models.errors import ModelFileError, ModelNotFoundError
from kcloud.models.graph import (
    SIGNATURE_CACHE,
    check_signature,
    count_flops,
    file_sha256,
    load_onnx,
    read_signature,
    signature_of,
    tensor_specs,
)

__all__ = [
    "ModelEntry",
    "ModelFileError",
    "ModelNotFoundError",
    "ModelRepository",
    "default_repository_path",
]

if TYPE_CHECKING:
    from kcloud.models.artifacts import Artifact

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
#: A transformers-platform version directory: a Hugging Face causal-LM checkpoint.
CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_TOKENIZER = "tokenizer.json"
_CHECKPOINT_FILES = (
    f"{CHECKPOINT_CONFIG}, {CHECKPOINT_WEIGHTS} (or *.safetensors shards) and {CHECKPOINT_TOKENIZER}"
)
_STAGING_PREFIX = ".staging-"


def default_repository_path() -> Path:
    return kcloud_home() / "models"


@dataclass(frozen=True)
class ModelEntry:
    """One version of one model, checked and ready to load."""

    name: str
    version: int
    config: ModelConfig
    #: The version directory, `<repo>/<model>/<version>`.
    path: Path
    #: The model directory, `<repo>/<model>`, where the config and processing files live.
    model_dir: Path
    #: `model.onnx`, or a checkpoint's `model.safetensors` (the index of a sharded one).
    weights_path: Path
    #: SHA-256 of the weights (over every shard's digest for a sharded checkpoint), for artifact
    #: caches and bench environment snapshots.
    sha256: str
    #: The compiled artifact this entry is served from (`weights_path` is then its file); None:
    #: the source graph itself (`kcloud.models.artifacts`).
    artifact: Artifact | None = None

    def file(self, relative: str) -> Path:
        """A processing or data file named in the config, relative to the model directory."""
        return self.model_dir / relative


def _version_number(path: Path) -> int | None:
    return int(path.name) if path.is_dir() and path.name.isdigit() and int(path.name) > 0 else None


def _versions_in(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(v for p in model_dir.iterdir() if (v := _version_number(p)) is not None)


def _named_files(config: ModelConfig) -> list[tuple[str, str]]:
    """(key, relative path) of every file the config names."""
    files = []
    if config.processing.tokenizer:
        files.append(("processing.tokenizer", config.processing.tokenizer))
    if config.accuracy and config.accuracy.dataset:
        files.append(("accuracy.dataset", config.accuracy.dataset))
    return files


def _check_named_files(config: ModelConfig, base: Path, config_path: Path) -> None:
    if config.processing.kind == "sentence-embedding" and not config.processing.tokenizer:
        raise ModelFileError(
            f"{config_path}: key `processing.tokenizer`: a sentence-embedding model needs one"
        )
    for key, relative in _named_files(config):
        target = (base / relative).resolve()
        if not target.is_relative_to(base.resolve()):
            raise ModelFileError(
                f"{config_path}: key `{key}`: {relative!r} points outside the model directory"
            )
        if not target.is_file():
            raise ModelFileError(f"{config_path}: key `{key}`: file {target} not found")
    if config.processing.kind == "sentence-embedding":
        _check_tokenizer(base / config.processing.tokenizer)  # type: ignore[operator]


def _check_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise ModelFileError(f"{path}: not a readable HF tokenizers file: {exc}") from None


# ------------------------------------------------------------------------- checkpoints
def _checkpoint_weights(directory: Path) -> list[Path]:
    """The safetensors files of a complete checkpoint directory; each missing file is named."""
    weights = sorted(directory.glob("*.safetensors"))
    for name, present in (
        (CHECKPOINT_CONFIG, (directory / CHECKPOINT_CONFIG).is_file()),
        (f"{CHECKPOINT_WEIGHTS} (nor any *.safetensors shard)", bool(weights)),
        (CHECKPOINT_TOKENIZER, (directory / CHECKPOINT_TOKENIZER).is_file()),
    ):
        if not present:
            raise ModelFileError(
                f"{directory}/{name}: not found (a transformers model's version holds {_CHECKPOINT_FILES})"
            )
    return weights


def _weights_identity(directory: Path, weights: list[Path]) -> tuple[Path, str]:
    """(weights path, digest) of a checkpoint: one file's SHA-256, or one over every shard's."""
    single = directory / CHECKPOINT_WEIGHTS
    if weights == [single]:
        return single, file_sha256(single)
    digest = hashlib.sha256()
    for shard in weights:
        digest.update(f"{shard.name}:{file_sha256(shard)}\n".encode())
    index = directory / f"{CHECKPOINT_WEIGHTS}.index.json"
    return (index if index.is_file() else weights[0]), digest.hexdigest()


def _safetensors_size(path: Path) -> tuple[int, int]:
    """(parameters, bytes) of a safetensors file, from its header alone."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * 2**20:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(handle.read(length))
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        parameters = sum(math.prod(t["shape"]) for t in tensors)
        size = sum(t["data_offsets"][1] - t["data_offsets"][0] for t in tensors)
    except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    return parameters, size


def _check_checkpoint(directory: Path) -> tuple[int, int]:
    """Check a checkpoint about to be added, more deeply than a load does; (parameters, bytes)."""
    weights = _checkpoint_weights(directory)
    config_json = directory / CHECKPOINT_CONFIG
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{config_json}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not ("model_type" in data or "architectures" in data):
        raise ModelFileError(
            f"{config_json}: not a Hugging Face model config (no `model_type` or `architectures`)"
        )
    _check_tokenizer(directory / CHECKPOINT_TOKENIZER)
    sizes = [_safetensors_size(path) for path in weights]
    return sum(p for p, _ in sizes), sum(b for _, b in sizes)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise writers across processes (e.g. `kcloud up` and `kcloud models build`)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class _Source:
    """A validated model about to be copied in: its config, versions and support files."""

    config: ModelConfig
    #: Per version, in order: a whole source version directory to copy, or the loose files that
    #: make one (a single .onnx file, copied as model.onnx; a flat checkpoint's files).
    versions: list[Path | list[Path]]
    support: list[tuple[Path, str]]  # (source path, relative destination in the model dir)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    # ----------------------------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Names of the model directories (those with a config), broken or not."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).exists()
        )

    def versions(self, name: str) -> list[int]:
        return _versions_in(self.root / name)

    def list(self, all_versions: bool = False) -> list[ModelEntry]:
        """The latest version of each model (every version with `all_versions`).

        A broken model is left out with a warning so that one bad directory cannot stop the
        others from serving; `problems()` says what is wrong with it.
        """
        entries = []
        for name in self.names():
            try:
                versions = self.versions(name) if all_versions else [None]
                entries += [self.get(name, v) for v in versions]
            except (ModelFileError, ModelNotFoundError) as exc:
                log.warning("skipping model %s: %s", name, exc)
        return entries

    def problems(self) -> dict[str, str]:
        """What is wrong with each model that `list()` leaves out."""
        found = {}
        for name in self.names():
            try:
                for version in self.versions(name) or [None]:
                    self.get(name, version)
            except (ModelFileError, ModelNotFoundError) as exc:
                found[name] = str(exc)
        return found

    def get(self, name: str, version: int | None = None) -> ModelEntry:
        """A checked model version, the latest when `version` is None."""
        model_dir = self.root / name
        if name.startswith(".") or "/" in name or not (model_dir / CONFIG_FILE).is_file():
            known = self.names()
            have = f"it has: {', '.join(known)}" if known else "it is empty (run `kcloud models build`)"
            raise ModelNotFoundError(f"model {name!r} not found in the repository {self.root}; {have}")
        versions = self.versions(name)
        if not versions:
            raise ModelFileError(
                f"{model_dir}: no version directory with a {MODEL_FILE} or checkpoint "
                f"(expected {model_dir}/1/{MODEL_FILE}, or {model_dir}/1/ with {_CHECKPOINT_FILES})"
            )
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}; versions: {', '.join(map(str, versions))}"
            )
        config_path = model_dir / CONFIG_FILE
        config = load_config(config_path)
        if config.name != name:
            raise ModelFileError(
                f"{config_path}: key `name`: {config.name!r} differs from the directory name {name!r}"
            )
        version_dir = model_dir / str(chosen)
        if config.platform == "transformers":
            weights_path, sha256 = _weights_identity(version_dir, _checkpoint_weights(version_dir))
        else:
            weights_path = version_dir / MODEL_FILE
            if not weights_path.is_file():
                raise ModelFileError(f"{weights_path}: model file not found")
            check_signature(config, read_signature(weights_path), config_path)
            sha256 = file_sha256(weights_path)
        _check_named_files(config, model_dir, config_path)
        return ModelEntry(
            name=name,
            version=chosen,
            config=config,
            path=version_dir,
            model_dir=model_dir,
            weights_path=weights_path,
            sha256=sha256,
        )

    # ----------------------------------------------------------------------------------- writing
    def add(
        self, path: Path, name: str | None = None, config: Path | None = None, replace: bool = False
    ) -> ModelEntry:
        """Add a model and return its (latest) entry.

        `path` is a model directory in repository layout (`config.toml` plus `<n>/model.onnx`
        version directories, or a flat `model.onnx` beside the config), or a single `.onnx` file
        with an optional `config` TOML; without one the signature is inferred from the graph.
        For a transformers model the versions are checkpoint directories, or the directory is a
        Hugging Face checkpoint itself with a `config.toml` added (version 1).
        `name` overrides the config's name. If the model exists, the versions are added after
        its latest one, provided the signature still fits every existing version; with
        `replace` the existing model is swapped out whole instead.
        Everything is checked before anything is copied.
        """
        path = Path(path)
        source = self._read_source(path, name, config)
        model_name = source.config.name
        with _locked(self.root / ".add.lock"):
            existing = self.versions(model_name) if (self.root / model_name / CONFIG_FILE).is_file() else []
            if existing and not replace:
                present = load_config(self.root / model_name / CONFIG_FILE).platform
                if present != source.config.platform:
                    raise ModelFileError(
                        f"{path}: a {source.config.platform} model cannot be a new version of "
                        f"{model_name!r}, a {present} model; add it under another name or with replace"
                    )
                return self._add_versions(source, existing)
            return self._add_new(source, replace)

    def remove(self, name: str) -> None:
        """Remove a model and all its versions (renamed away first, so it vanishes at once)."""
        model_dir = self.root / name
        if name.startswith(".") or "/" in name or not model_dir.is_dir():
            raise ModelNotFoundError(f"model {name!r} not found in the repository {self.root}")
        with _locked(self.root / ".add.lock"):
            doomed = self.root / f"{_STAGING_PREFIX}removed-{name}-{os.getpid()}"
            os.rename(model_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # ---------------------------------------------------------------------------------- internals
    def _read_source(self, path: Path, name: str | None, config_path: Path | None) -> _Source:
        if path.is_dir():
            return self._read_source_dir(path, name, config_path)
        if path.is_file():
            if path.suffix != ".onnx":
                raise ModelFileError(f"{path}: expected a model directory or an .onnx file")
            return self._read_source_file(path, name, config_path)
        raise ModelFileError(f"{path}: no such file or directory")

    def _read_source_dir(self, path: Path, name: str | None, config_path: Path | None) -> _Source:
        config_path = config_path or path / CONFIG_FILE
        if not config_path.is_file():
            raise ModelFileError(
                f"{config_path}: config file not found (a model directory needs a {CONFIG_FILE})"
            )
        config = _renamed(load_config(config_path), name, config_path)
        numbered = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
        if any(number == 0 for number, _ in numbered):
            raise ModelFileError(f"{path / '0'}: version numbers start at 1")
        if config.platform == "transformers":
            return self._read_checkpoint_dir(path, config, config_path, [d for _, d in numbered])
        if numbered:
            for _, version_dir in numbered:
                if not (version_dir / MODEL_FILE).is_file():
                    raise ModelFileError(f"{version_dir / MODEL_FILE}: model file not found")
            onnx_files = [d / MODEL_FILE for _, d in numbered]
            versions: list[Path | list[Path]] = [d for _, d in numbered]
        elif (path / MODEL_FILE).is_file():
            onnx_files, versions = [path / MODEL_FILE], [[path / MODEL_FILE]]
        else:
            raise ModelFileError(
                f"{path}: no {MODEL_FILE} (expected {path}/1/{MODEL_FILE} or {path}/{MODEL_FILE})"
            )
        skip = {
            config_path.resolve(),
            *(f.resolve() for f in onnx_files),
            *(d.resolve() for _, d in numbered),
        }
        support = [
            (p, p.name)
            for p in sorted(path.iterdir())
            if p.resolve() not in skip
            and not p.name.startswith(".")
            and p.name not in (CONFIG_FILE, SIGNATURE_CACHE)
        ]
        _check_named_files(config, path, config_path)
        config = self._checked_against_graphs(config, onnx_files, config_path)
        return _Source(config, versions, support)

    def _read_checkpoint_dir(
        self, path: Path, config: ModelConfig, config_path: Path, numbered: list[Path]
    ) -> _Source:
        """A transformers model: checkpoint version directories, or a checkpoint directory itself."""
        named = [(path / rel, rel) for _, rel in _named_files(config)]
        if numbered:
            sizes = [_check_checkpoint(d) for d in numbered]
            versions: list[Path | list[Path]] = list(numbered)
            skip = {config_path.resolve(), *(d.resolve() for d in numbered)}
            support = [
                (p, p.name)
                for p in sorted(path.iterdir())
                if p.resolve() not in skip and not p.name.startswith(".") and p.name != CONFIG_FILE
            ]
        else:
            # A Hugging Face checkpoint directory with a config.toml dropped in: its files (not
            # its subdirectories, e.g. a copy of the original weights) are version 1.
            sizes = [_check_checkpoint(path)]
            skip = {config_path.resolve(), *(p.resolve() for p, _ in named)}
            versions = [[
                p for p in sorted(path.iterdir())
                if p.is_file() and p.resolve() not in skip and not p.name.startswith(".")
                and p.name != CONFIG_FILE
            ]]
            support = named
        _check_named_files(config, path, config_path)
        parameters, weights_bytes = max(sizes, key=lambda size: size[1])  # the largest version
        generation = config.generation
        assert generation is not None  # the config's own rule for a transformers model
        updates: dict[str, object] = {}
        if config.memory_bytes is None:
            updates["memory_bytes"] = weights_bytes + generation.kv_cache_bytes
        if generation.flops_per_token is None and parameters:
            updates["generation"] = generation.model_copy(update={"flops_per_token": 2.0 * parameters})
        config = config.model_copy(update=updates) if updates else config
        return _Source(config, versions, support)

    def _read_source_file(self, path: Path, name: str | None, config_path: Path | None) -> _Source:
        if config_path is not None:
            config = _renamed(load_config(config_path), name, config_path)
            base = config_path.parent
            _check_named_files(config, base, config_path)
            if config.platform == "transformers":
                raise ModelFileError(
                    f"{config_path}: a transformers model is a checkpoint directory ({_CHECKPOINT_FILES} "
                    f"beside the config.toml), not the single file {path}"
                )
            support = [(base / rel, rel) for _, rel in _named_files(config)]
            config = self._checked_against_graphs(config, [path], config_path)
            return _Source(config, [[path]], support)
        model = load_onnx(path)
        signature = signature_of(model, path)
        inputs = tensor_specs(signature.inputs, path)
        outputs = tensor_specs(signature.outputs, path)
        batched = all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))
        data = {
            "name": name or _name_from_stem(path.stem),
            "description": f"added from {path.name}; signature inferred from the graph",
            "inputs": [s.model_dump() for s in inputs],
            "outputs": [s.model_dump() for s in outputs],
            "batching": {} if batched else {"max_batch_size": 0},
            "flops_per_sample": count_flops(model) if batched else None,
            "memory_bytes": signature.weights_bytes,
        }
        config = config_from_dict(
            {k: v for k, v in data.items() if v is not None}, f"inferred config for {path}"
        )
        return _Source(config, [[path]], [])

    def _checked_against_graphs(
        self, config: ModelConfig, onnx_files: list[Path], config_path: Path
    ) -> ModelConfig:
        """Check the config against every graph; fill in FLOPs and weight bytes when absent."""
        first: onnx.ModelProto | None = None
        for onnx_file in onnx_files:
            model = load_onnx(onnx_file)
            check_signature(config, signature_of(model, onnx_file), config_path)
            first = first or model
        assert first is not None
        updates: dict[str, object] = {}
        if config.memory_bytes is None:
            updates["memory_bytes"] = signature_of(first, onnx_files[0]).weights_bytes
        if (
            config.flops_per_sample is None
            and config.processing.kind == "none"
            and config.batching.max_batch_size > 0
        ):
            flops = count_flops(first)
            if flops is not None:
                updates["flops_per_sample"] = flops
        return config.model_copy(update=updates) if updates else config

    def _stage(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))

    @staticmethod
    def _copy_version(source: _Source, index: int, target: Path) -> None:
        version = source.versions[index]
        if isinstance(version, Path):
            shutil.copytree(version, target, ignore=shutil.ignore_patterns(SIGNATURE_CACHE, ".*"))
            return
        target.mkdir(parents=True)
        onnx_model = source.config.platform == "onnxruntime"
        for file in version:
            shutil.copy2(file, target / (MODEL_FILE if onnx_model else file.name))

    def _add_new(self, source: _Source, replace: bool = False) -> ModelEntry:
        name = source.config.name
        staging = self._stage()
        try:
            model_dir = staging / name
            model_dir.mkdir()
            for src, relative in source.support:
                destination = model_dir / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, destination)
                else:
                    shutil.copy2(src, destination)
            for index, version in enumerate(source.versions):
                number = int(version.name) if isinstance(version, Path) else index + 1
                self._copy_version(source, index, model_dir / str(number))
            save_config(source.config, model_dir / CONFIG_FILE)
            if (self.root / name).exists():
                if not replace:
                    raise ModelFileError(
                        f"{self.root / name}: already exists but holds no usable model version; "
                        f"remove it first (`kcloud models remove {name}`) or add with replace"
                    )
                os.rename(self.root / name, staging / f"replaced-{name}")
            os.rename(model_dir, self.root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name)

    def _add_versions(self, source: _Source, existing: list[int]) -> ModelEntry:
        name = source.config.name
        model_dir = self.root / name
        config_path = model_dir / CONFIG_FILE
        if source.config.platform == "onnxruntime":
            for version in existing:
                check_signature(
                    source.config, read_signature(model_dir / str(version) / MODEL_FILE), config_path
                )
        for src, relative in source.support:
            present = model_dir / relative
            if present.exists() and not (
                src.is_file() and present.is_file() and filecmp.cmp(src, present, shallow=False)
            ):
                raise ModelFileError(
                    f"{src}: differs from {present}, which model {name!r} already uses; "
                    f"add it under another name or remove the model first"
                )
        staging = self._stage()
        try:
            staged = []
            for index in range(len(source.versions)):
                target = staging / str(existing[-1] + index + 1)
                self._copy_version(source, index, target)
                staged.append(target)
            for src, relative in source.support:
                destination = model_dir / relative
                if not destination.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    (shutil.copytree if src.is_dir() else shutil.copy2)(src, destination)
            for target in staged:
                os.rename(target, model_dir / target.name)
            save_config(source.config, config_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name)


def _name_from_stem(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).lstrip("._-")
    return cleaned or "model"


def _renamed(config: ModelConfig, name: str | None, config_path: Path) -> ModelConfig:
    if name is None or name == config.name:
        return config
    return config_from_dict({**config.model_dump(), "name": name}, f"{config_path} (with --name {name!r})")
