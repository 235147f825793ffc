"""`kcloud models`: list, show, add, build and remove models in the repository.

Heavy imports (onnx, onnxruntime, tokenizers) happen inside the commands, so `kcloud --help`
stays fast. A user's mistake is one red message and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail
from kcloud.models.targets import TARGETS

if TYPE_CHECKING:
    from kcloud.models.config import ModelConfig, TensorSpec
    from kcloud.models.repository import ModelEntry, ModelRepository

DASH = "—"

models_app = typer.Typer(
    name="models",
    help="The model repository: list, show, add and build models.",
    no_args_is_help=True,
)

RepoOption = typer.Option(None, "--repo", help="Model repository directory (default: $KCLOUD_HOME/models).")
VersionOption = typer.Option(None, "--version", help="Version (default: the latest).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `kcloud` app."""
    app.add_typer(models_app, name="models")


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=180)


def _repository(repo: Path | None) -> ModelRepository:
    from kcloud.models.repository import ModelRepository, default_repository_path

    return ModelRepository(repo or default_repository_path())


def _tensor(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.datatype}{spec.shape}"


def _signature(config: ModelConfig, tensors: list[TensorSpec]) -> str:
    """A column of tensors, or what a generative model takes and gives instead."""
    if config.generation is not None:
        return f"tokens (context {config.generation.context_length})"
    return "\n".join(_tensor(s) for s in tensors)


def _batching(config: ModelConfig) -> str:
    if config.generative:
        return "continuous, by the engine"
    b = config.batching
    if b.max_batch_size == 0:
        return "off"
    return f"max {b.max_batch_size}, {b.max_queue_delay_ms:g} ms, queue {b.queue_limit}"


def _accuracy(config: ModelConfig) -> str:
    a = config.accuracy
    if a is None:
        return DASH
    return f"{a.metric} ≥ {a.threshold:.4f} ({a.ratio:.0%} of {a.reference:.4f})"


def _flops(value: float | None) -> str:
    if value is None:
        return DASH
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:g} FLOP"


def _bytes(value: int | None) -> str:
    if value is None:
        return DASH
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _run(action: Any) -> Any:
    """Call `action`, turning the repository's errors into one red message and exit 2."""
    from kcloud.models.errors import BuildError, ModelFileError, ModelNotFoundError

    try:
        return action()
    except (ModelFileError, ModelNotFoundError, BuildError) as exc:
        raise fail(str(exc), BAD_INPUT) from None


def entry_record(entry: ModelEntry, versions: list[int]) -> dict[str, Any]:
    """JSON form of a model version: where it lives, its hash, its contract, how it was built."""
    build_file = entry.path / "build.json"
    try:
        build = json.loads(build_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        build = None
    return {
        "name": entry.name,
        "version": entry.version,
        "versions": versions,
        "path": str(entry.model_dir),
        "weights": str(entry.weights_path),
        "onnx": str(entry.weights_path) if entry.config.platform == "onnxruntime" else None,
        "sha256": entry.sha256,
        "config": entry.config.model_dump(mode="json"),
        "build": build,
        "artifacts": _artifact_records(entry),
    }


def _artifact_records(entry: ModelEntry) -> list[dict[str, Any]]:
    from kcloud.models.artifacts import list_artifacts

    return [artifact.describe() if artifact else {"target": target, "error": problem}
            for target, artifact, problem in list_artifacts(entry)]


@models_app.command("list")
def list_models(
    repo: Path | None = RepoOption, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Every model: versions, signature, batching, device kinds, accuracy target."""
    repository = _repository(repo)
    entries = repository.list()
    problems = repository.problems()
    if as_json:
        records = [entry_record(e, repository.versions(e.name)) for e in entries]
        records += [{"name": name, "error": error} for name, error in problems.items()]
        typer.echo(json.dumps(records, indent=2))
        return
    if not entries and not problems:
        _console().print(
            f"No models in {repository.root}. Build the bundled ones with `kcloud models build`."
        )
        return
    table = Table(title=f"Models in {repository.root}")
    for column in (
        "name",
        "versions",
        "inputs",
        "outputs",
        "batching",
        "devices",
        "FLOPs/sample",
        "accuracy target",
    ):
        table.add_column(column)
    for entry in entries:
        config = entry.config
        table.add_row(
            escape(entry.name),
            ", ".join(map(str, repository.versions(entry.name))),
            escape(_signature(config, config.inputs)),
            escape(_signature(config, config.outputs)),
            _batching(config),
            ", ".join(config.device_kinds),
            _flops(config.flops_per_sample) if config.generation is None
            else f"{_flops(config.generation.flops_per_token)}/token",
            escape(_accuracy(config)),
        )
    for name, error in problems.items():
        table.add_row(escape(name), DASH, f"[red]{escape(error)}[/red]", "", "", "", "", "")
    _console().print(table)


@models_app.command("show")
def show_model(
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = VersionOption,
    repo: Path | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """One model's contract, files and build record."""
    repository = _repository(repo)
    entry = _run(lambda: repository.get(name, version))
    record = entry_record(entry, repository.versions(name))
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    config = entry.config
    table = Table(title=f"{entry.name} (version {entry.version})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("description", config.description or DASH),
        ("versions", ", ".join(map(str, record["versions"]))),
        ("directory", str(entry.model_dir)),
        ("platform", config.platform),
        ("weights file", f"{entry.weights_path}\nsha256 {entry.sha256}"),
        ("inputs", _signature(config, config.inputs)),
        ("outputs", _signature(config, config.outputs)),
        ("batching", _batching(config)),
        ("device kinds", ", ".join(config.device_kinds)),
        (
            "processing",
            config.processing.kind
            + (
                f" (tokenizer {config.processing.tokenizer}, max {config.processing.max_length} tokens)"
                if config.processing.tokenizer
                else ""
            ),
        ),
        ("FLOPs/sample", _flops(config.flops_per_sample)),
        ("memory", _bytes(config.memory_bytes)),
        (
            "accuracy target",
            _accuracy(config) + (f"\ndata set {config.accuracy.dataset}" if config.accuracy else ""),
        ),
    ]
    if config.generation is not None:
        g = config.generation
        rows.append((
            "generation",
            f"context {g.context_length} tokens, KV cache {_bytes(g.kv_cache_bytes)}, {g.dtype}, "
            f"chat {'yes' if g.chat else 'no'}, default max_tokens {g.default_max_tokens}, "
            f"{_flops(g.flops_per_token)}/token",
        ))
    if record["build"]:
        rows.append(("build", json.dumps(record["build"], indent=1)))
    if record["artifacts"]:
        rows.append(("artifacts", "\n".join(a.get("summary") or f"{a['target']}: {a['error']}"
                                             for a in record["artifacts"])))
    for field, value in rows:
        table.add_row(field, escape(value))
    _console().print(table)


@models_app.command("add")
def add_model(
    path: Path = typer.Argument(
        ...,
        help="A model directory (config.toml + <version>/model.onnx, or a Hugging Face checkpoint "
        "beside a config.toml with platform = \"transformers\") or an .onnx file.",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Name in the repository (default: the config's or file's)."
    ),
    config: Path | None = typer.Option(None, "--config", help="config.toml for a single .onnx file."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing model of that name whole."),
    repo: Path | None = RepoOption,
) -> None:
    """Check a model and copy it into the repository (a new version if the name exists)."""
    repository = _repository(repo)
    entry = _run(lambda: repository.add(path, name=name, config=config, replace=replace))
    _console().print(
        f"[green]added[/green] {escape(entry.name)} version {entry.version} → {escape(str(entry.model_dir))}"
    )


@models_app.command("build")
def build_models(
    names: list[str] | None = typer.Argument(
        None,
        help="Built-in models to build (default: all-MiniLM-L6-v2, digits-cnn, and "
        "SmolLM2-135M-Instruct where the [llm] extra is installed).",
    ),
    repo: Path | None = RepoOption,
) -> None:
    """Build the bundled models (offline); does nothing for those already built."""
    from kcloud.models.builtin import default_models, ensure_builtin_models

    repository = _repository(repo)
    entries = _run(
        lambda: ensure_builtin_models(repository, include=tuple(names or default_models()), progress=True)
    )
    for entry in entries:
        _console().print(
            f"[green]ready[/green] {escape(entry.name)} version {entry.version}  "
            f"({escape(_accuracy(entry.config))})"
        )


@models_app.command("remove")
def remove_model(
    name: str = typer.Argument(..., help="Model name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    repo: Path | None = RepoOption,
) -> None:
    """Remove a model and all its versions."""
    repository = _repository(repo)
    if not yes and not typer.confirm(f"Remove model {name!r} and all its versions from {repository.root}?"):
        raise typer.Exit(1)
    _run(lambda: repository.remove(name))
    _console().print(f"[green]removed[/green] {escape(name)}")


@models_app.command("compile")
def compile_artifact(
    name: str = typer.Argument(..., help="Model name."),
    target: str = typer.Option(..., "--target", "-t", help=f"One of: {', '.join(TARGETS)}."),
    version: int | None = VersionOption,
    force: bool = typer.Option(
        False, "--force", help="Build again even if a matching artifact (or refusal) exists."
    ),
    repo: Path | None = RepoOption,
    as_json: bool = typer.Option(False, "--json", help="Print the build record as JSON."),
) -> None:
    """Compile a model version for a target, gated on accuracy; cached by source, target and settings."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kcloud.models.compiler import compile_model

    repository = _repository(repo)
    entry = _run(lambda: repository.get(name, version))
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  disable=as_json, transient=True) as bar:
        task = bar.add_task(f"compiling {name} for {target}", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{name} → {target}: {what}")

        result = _run(lambda: compile_model(entry, target, force=force, progress=progress))
    artifact = result.artifact
    if as_json:
        record = {**artifact.describe(), "cached": result.cached, "record": artifact.record}
        typer.echo(json.dumps(record, indent=2))
        return
    verb = "cached" if result.cached else "built"
    _console().print(f"[green]{verb}[/green] {escape(artifact.summary())}\n  → {escape(str(artifact.path))}")


@models_app.command("artifacts")
def list_model_artifacts(
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = VersionOption,
    repo: Path | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """The compiled artifacts of a model version, with their gates; refused and broken ones say why."""
    from kcloud.models.artifacts import list_artifacts

    repository = _repository(repo)
    entry = _run(lambda: repository.get(name, version))
    found = list_artifacts(entry)
    if as_json:
        typer.echo(json.dumps([
            artifact.describe() if artifact else {"target": target, "error": problem}
            for target, artifact, problem in found], indent=2))
        return
    if not found:
        _console().print(f"No artifacts of {escape(entry.name)} version {entry.version}. "
                         f"Build one with `kcloud models compile {escape(entry.name)} --target cpu-int8`.")
        return
    table = Table(title=f"Artifacts of {entry.name} (version {entry.version})")
    for column in ("target", "key", "accuracy and speed", "file"):
        table.add_column(column)
    for target, artifact, problem in found:
        if artifact is None:
            table.add_row(escape(target), DASH, f"[red]{escape(problem or '')}[/red]", DASH)
        else:
            table.add_row(escape(target), artifact.key[:12], escape(artifact.summary().split("; ", 1)[-1]),
                          escape(str(artifact.path)))
    _console().print(table)


def _size_bytes(text: str) -> int:
    """`60MB`, `1.5GiB`, `4096` → bytes; typer.BadParameter otherwise."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    number = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if unit and number.endswith(unit):
            value, scale = number[: -len(unit)], units[unit]
            break
    else:
        value, scale = number, 1
    try:
        size = float(value) * scale
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 60MB, 1.5GiB, 4096)") from None
    if size <= 0:
        raise typer.BadParameter(f"{text!r}: a size must be positive")
    return int(size)


@models_app.command("partition")
def partition_model(
    name: str = typer.Argument(..., help="Model name."),
    stages: int = typer.Option(..., "--stages", "-n", help="Number of pipeline stages."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", help="Most weight bytes one stage may hold, e.g. 60MB or 1.5GiB."
    ),
    cut_after: list[str] = typer.Option([], "--cut-after", help="Cut after this node (once per cut)."),
    out: Path | None = typer.Option(
        None, "--out", help="Where the stage files go (default: <version>/partitions/<N>-stages)."
    ),
    version: int | None = VersionOption,
    repo: Path | None = RepoOption,
    as_json: bool = typer.Option(False, "--json", help="Print the partition as JSON."),
) -> None:
    """Split a model's graph into pipeline stages balanced by a measured profile (and memory)."""
    from kcloud.models.datasets import load_dataset
    from kcloud.models.partition import partition
    from kcloud.models.pipelines import graph_feeds

    repository = _repository(repo)
    entry = _run(lambda: repository.get(name, version))
    if entry.config.platform != "onnxruntime":
        raise fail(
            f"model {name!r} is a {entry.config.platform} model; only ONNX graphs are partitioned", BAD_INPUT
        )
    limit = _size_bytes(memory_limit) if memory_limit else None
    feeds = None
    if entry.config.accuracy and entry.config.accuracy.dataset:
        samples = _run(lambda: load_dataset(entry)).inputs
        feeds = graph_feeds(entry, samples[:16])[:2]
    target = out or entry.path / "partitions" / f"{stages}-stages"
    result = _run(lambda: partition(entry.weights_path, stages, target, feeds=feeds, memory_limit=limit,
                                    cut_after=list(cut_after) or None))
    if as_json:
        typer.echo(json.dumps(result.describe(), indent=2))
        return
    title = f"{entry.name} in {stages} stage(s): balance {result.balance:.3f} ({result.cost_basis})"
    table = Table(title=title)
    for column in ("stage", "nodes", "cost share", "weights", "takes", "gives", "file"):
        table.add_column(column)
    for stage in result.stages:
        table.add_row(str(stage.index), f"{stage.first}–{stage.last - 1}", f"{stage.cost_share:.1%}",
                      _bytes(stage.weight_bytes), escape(", ".join(stage.inputs)),
                      escape(", ".join(stage.outputs)), escape(str(stage.path)))
    _console().print(table)
