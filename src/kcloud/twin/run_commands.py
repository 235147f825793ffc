"""`kcloud twin run SCENARIO`: simulate a farm under a load; writes a JSON result and an HTML report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail
from kcloud.farm.profiles import ProfileBook, profiles_dir
from kcloud.models.repository import ModelRepository, default_repository_path
from kcloud.twin import report
from kcloud.twin.load import LoadError
from kcloud.twin.results import REPORT_FILE, RESULT_FILE, default_twin_dir
from kcloud.twin.run import run
from kcloud.twin.scenario import ScenarioError, load_scenario, place
from kcloud.twin.sim import COMPILED

console = Console()


def _run(
    scenario: Path = typer.Argument(..., help="Scenario file (TOML): farm, deployments and loads, failures."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for the result (default: $KCLOUD_HOME/twin/<time>)."
    ),
    duration_s: float | None = typer.Option(
        None, "--duration", help="Simulated seconds (overrides the scenario)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed of the arrivals (overrides the scenario)."
    ),
    repo: Path | None = typer.Option(None, "--repo", help="Model repository (default: $KCLOUD_HOME/models)."),
    profiles: Path | None = typer.Option(
        None, "--profiles", help="Measured profiles (default: $KCLOUD_HOME/profiles)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Predict throughput, latency, utilisation and energy of a farm under a load (all modelled)."""
    if duration_s is not None and duration_s <= 0:
        raise fail(f"--duration must be > 0 s, got {duration_s:g}", BAD_INPUT)
    try:
        spec = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    if duration_s is not None:
        spec.twin.duration_s = duration_s
    if seed is not None:
        spec.twin.seed = seed
    try:
        repository = ModelRepository(repo or default_repository_path())
        farm = place(spec, repository, ProfileBook.load(profiles or profiles_dir()))
        if not COMPILED:
            console.print("[yellow]numba is not installed: the simulation runs interpreted (slow)[/yellow]")
        with console.status(f"simulating {spec.twin.duration_s:g} s of {farm.farm_name} ..."):
            result = run(farm)
    except (ScenarioError, LoadError) as exc:
        raise fail(f"{scenario}: {exc}", BAD_INPUT) from None
    target = out or default_twin_dir() / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target.mkdir(parents=True, exist_ok=True)
    (target / RESULT_FILE).write_text(json.dumps(result, indent=1), "utf-8")
    (target / REPORT_FILE).write_text(report.render(result), "utf-8")
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    _print(result)
    console.print(f"result: {target / RESULT_FILE}\nreport: {target / REPORT_FILE}")


def _print(result: dict) -> None:
    sim = result["simulation"]
    table = Table(
        title=f"kcloud twin: {result['farm']}, {result['duration_s']:g} s (MODELLED)",
        box=box.SIMPLE,
        pad_edge=False,
    )
    for column in (
        "deployment",
        "replicas",
        "offered/s",
        "answered/s",
        "p50 ms",
        "p99 ms",
        "refused*",
    ):
        table.add_column(column, justify="left" if column == "deployment" else "right", min_width=len(column))
    for d in result["deployments"]:
        lat = d["latency_ms"]
        table.add_row(
            d["name"],
            str(len(d["replicas"])),
            f"{d['offered_rps']:.5g}",
            f"{d['throughput_rps']:.5g}",
            _ms(lat["p50"]),
            _ms(lat["p99"]),
            f"{d['shed_429']}/{d['timed_out_504']}/{d['no_replica_503'] + d['over_client_cap_503']}/"
            f"{d['failed_502']}",
        )
    console.print(table)
    console.print(
        "* refused: shed 429 / past deadline 504 / no replica or over a client's cap 503 / failed twice 502",
        style="dim",
    )
    energy = result["energy"]
    console.print(
        f"farm energy {energy['energy_j']:.6g} J, mean power {energy['mean_power_w']:.6g} W (modelled)"
        + (f"; {energy['note']}" if energy["note"] else "")
    )
    for line in result["events"]:
        console.print(f"  {line}", highlight=False)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    console.print(
        f"{sim['requests']:,} requests simulated in {sim['wall_s']} s ({sim['speed_x_real_time']}× real time)"
    )


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def register(app: typer.Typer) -> None:
    app.command("run")(_run)
