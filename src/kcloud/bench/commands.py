"""`kcloud bench run | report | compare`: MLPerf LoadGen verification from the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from kcloud.bench.errors import BenchError, BenchInterrupted
from kcloud.cli_errors import BAD_INPUT, fail

bench_app = typer.Typer(
    name="bench",
    help="Verify a device or a deployment the MLPerf way: LoadGen runs, accuracy, energy, reports.",
    no_args_is_help=True,
)

console = Console()
err_console = Console(stderr=True)


@bench_app.command("run")
def run(
    model: str = typer.Option(..., "--model", "-m", help="Model name in the repository."),
    scenario: str = typer.Option(
        ..., "--scenario", "-s", help="SingleStream, MultiStream, Server or Offline (any case)."
    ),
    mode: str = typer.Option("performance", "--mode", help="performance or accuracy."),
    device: str | None = typer.Option(
        None, "--device", "-d", help="Device uid for the in-process SUT (default: the local CPU)."
    ),
    url: str | None = typer.Option(
        None, "--url", help="Gateway base URL for the network SUT, e.g. http://127.0.0.1:8000."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="KCLOUD_API_KEY", help="Gateway API key for the network SUT."
    ),
    quick: bool = typer.Option(False, "--quick", help="Short run for tests (still fully through LoadGen)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file of settings (see docs/bench.md)."),
    target_qps: float | None = typer.Option(
        None, "--target-qps", help="Offline expected / Server target QPS."
    ),
    latency_bound_ms: float | None = typer.Option(None, "--latency-bound-ms", help="Server latency bound."),
    expected_latency_ms: float | None = typer.Option(
        None, "--expected-latency-ms", help="SingleStream/MultiStream expected latency."
    ),
    min_duration_s: float | None = typer.Option(None, "--min-duration-s", help="LoadGen minimum duration."),
    max_duration_s: float | None = typer.Option(None, "--max-duration-s", help="LoadGen maximum duration."),
    min_query_count: int | None = typer.Option(
        None, "--min-query-count", help="LoadGen minimum query count."
    ),
    max_query_count: int | None = typer.Option(
        None, "--max-query-count", help="LoadGen maximum query count."
    ),
    samples_per_query: int | None = typer.Option(
        None, "--samples-per-query", help="MultiStream samples per query (MLPerf: 8)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Derives LoadGen's RNG seeds (default: MLPerf's)."),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight", help="Samples the SUT keeps in flight."
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", help="Chat models, performance: tokens each sample generates (default 128)."
    ),
    ttft_ms: float | None = typer.Option(
        None, "--ttft-ms", help="Chat models, Server: time-to-first-token bound (default 2000, p99)."
    ),
    tpot_ms: float | None = typer.Option(
        None, "--tpot-ms", help="Chat models, Server: time-per-output-token bound (default 100, p99)."
    ),
    tie_margin_nats: float | None = typer.Option(
        None, "--tie-margin-nats", help="Chat models, accuracy: near-tie margin of the gate (default 0.25)."
    ),
    farm: list[Path] = typer.Option([], "--farm", help="Farm file(s) declaring emulated devices."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Results root (default: $KCLOUD_HOME/bench)."),
    system: str | None = typer.Option(None, "--system", help="System name in the results tree."),
    isolation: str = typer.Option("thread", "--isolation", help="In-process replicas: thread or process."),
    version: int | None = typer.Option(None, "--model-version", help="Model version (default: latest)."),
    compile_target: str | None = typer.Option(
        None,
        "--target",
        help="Run the model's compiled artifact for this target (e.g. cpu-int8), "
        "compiled first when none is cached; in-process runs only.",
    ),
    served_name: str | None = typer.Option(
        None, "--served-name",
        help="With --url: the deployment to run against, when it is served under another name than "
             "the model's (kcloud deploy create --name).",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress bars."),
) -> None:
    """Run MLPerf LoadGen against a model on a local device or behind a kcloud gateway."""
    from kcloud.bench.runner import RunRequest, execute_run, prepare_run
    from kcloud.bench.settings import (
        canonical_scenario,
        load_config_file,
        merge_settings,
        settings_from_flags,
    )
    from kcloud.bench.summary import print_run

    scenario = canonical_scenario(scenario)
    try:
        flags = settings_from_flags(
            {
                "target_qps": target_qps,
                "latency_bound_ms": latency_bound_ms,
                "expected_latency_ms": expected_latency_ms,
                "min_duration_s": min_duration_s,
                "max_duration_s": max_duration_s,
                "min_query_count": min_query_count,
                "max_query_count": max_query_count,
                "samples_per_query": samples_per_query,
                "seed": seed,
                "max_in_flight": max_in_flight,
                "max_tokens": max_tokens,
                "ttft_ms": ttft_ms,
                "tpot_ms": tpot_ms,
                "tie_margin_nats": tie_margin_nats,
            }
        )
        file = load_config_file(config) if config is not None else None
        settings = merge_settings(scenario, quick=quick, file=file, flags=flags)
        # what the user set, without the quick profile (chat models have a quick profile of their own)
        explicit = merge_settings(scenario, quick=False, file=file, flags=flags) if quick else None
        request = RunRequest(
            model=model,
            scenario=scenario,
            mode=mode,
            device=device,
            url=url,
            api_key=api_key,
            settings=settings,
            quick=quick,
            explicit=explicit,
            system=system,
            out=out,
            farm_files=list(farm),
            isolation=isolation,
            version=version,
            target=compile_target,
            served_name=served_name,
        )
        prepared = prepare_run(request)
    except BenchError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    target = prepared.device.uid if prepared.device is not None else prepared.backend.describe().get("url")
    artifact = prepared.entry.artifact
    console.print(
        f"[bold]kcloud bench[/] {prepared.entry.name} v{prepared.entry.version}"
        f"{f' ({artifact.target} artifact)' if artifact else ''} · {scenario} · {mode} · "
        f"{target}{' (emulated)' if prepared.device is not None and prepared.device.emulated else ''}"
        f"{' · quick' if quick else ''}",
        highlight=False,
    )
    try:
        path = execute_run(prepared, console, show_progress=not no_progress)
    except BenchInterrupted as exc:
        err_console.print(f"[bold yellow]interrupted:[/] {exc}", highlight=False)
        sys.stdout.flush()
        sys.stderr.flush()
        # LoadGen's thread cannot be stopped from Python; the result is on disk, so end here.
        os._exit(130)
    except BenchError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    print_run(console, path)


@bench_app.command("report")
def report(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories (or parents of many), or result.json files."
    ),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
) -> None:
    """One self-contained HTML report over one run or many."""
    from kcloud.bench.report import write_report

    try:
        path, count = write_report(runs, output)
    except BenchError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    console.print(f"wrote {path} ({count} run{'s' if count != 1 else ''})", highlight=False)


@bench_app.command("compare")
def compare(
    a: Path = typer.Argument(..., help="Baseline run directory or result.json."),
    b: Path = typer.Argument(..., help="Run to compare with the baseline."),
) -> None:
    """Compare two runs in the terminal, with deltas."""
    from kcloud.bench.compare import compare_runs

    try:
        compare_runs(console, a, b)
    except BenchError as exc:
        raise fail(str(exc), BAD_INPUT) from None


def register(app: typer.Typer) -> None:
    """Add `kcloud bench` to the `kcloud` app."""
    app.add_typer(bench_app, name="bench")
