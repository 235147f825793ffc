"""`kcloud twin plan`: devices for a load under an SLO and their cost, or a farm's capacity under it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail
from kcloud.devices.catalog import UnknownChipError, load_catalog
from kcloud.farm.profiles import ProfileBook, profiles_dir
from kcloud.models.repository import ModelRepository, default_repository_path
from kcloud.twin.plan import FarmCapacity, SizingPlan, Slo, farm_capacity, size
from kcloud.twin.prices import PriceTableError, load_price_table
from kcloud.twin.scenario import ScenarioError

console = Console()


def _plan(
    model: str = typer.Option(..., "--model", "-m", help="Model of the repository."),
    p99_ms: float = typer.Option(..., "--p99-ms", help="The SLO: p99 latency of answered requests, ms."),
    rate: float | None = typer.Option(
        None, "--rate", help="Requests/s to serve (Poisson); sizes a new farm."
    ),
    farm: Path | None = typer.Option(
        None, "--farm", "-f", help="A farm file: its capacity under the SLO instead."
    ),
    chip: list[str] = typer.Option(
        [], "--chip", help="Candidate chip (catalog key); repeatable. Default: priced."
    ),
    vendor: str | None = typer.Option(None, "--vendor", help="With --farm: only this vendor's devices."),
    max_devices: int = typer.Option(256, "--max-devices", min=1, help="Largest count tried per chip."),
    prices: Path | None = typer.Option(None, "--prices", help="Price table (default: the bundled one)."),
    repo: Path | None = typer.Option(None, "--repo", help="Model repository (default: $KCLOUD_HOME/models)."),
    profiles: Path | None = typer.Option(
        None, "--profiles", help="Measured profiles (default: $KCLOUD_HOME)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Size devices for a load under a p99 SLO, cheapest first (--rate), or a farm's capacity (--farm)."""
    if p99_ms <= 0:
        raise fail(f"--p99-ms must be > 0, got {p99_ms:g}", BAD_INPUT)
    if (rate is None) == (farm is None):
        raise fail(
            "give either --rate (size devices for a load) or --farm (the capacity of a farm)", BAD_INPUT
        )
    if rate is not None and rate <= 0:
        raise fail(f"--rate must be > 0 requests/s, got {rate:g}", BAD_INPUT)
    repository = ModelRepository(repo or default_repository_path())
    book = ProfileBook.load(profiles or profiles_dir())
    try:
        if farm is not None:
            with console.status(f"searching the capacity of {farm.name} ..."):
                constraints = {"vendor": vendor} if vendor else {}
                found: SizingPlan | FarmCapacity = farm_capacity(
                    repository, book, farm, model, p99_ms, constraints
                )
        else:
            table = load_price_table(prices)
            with console.status("sizing each chip with the twin ..."):
                found = size(
                    repository,
                    book,
                    load_catalog(),
                    table,
                    model,
                    Slo(p99_ms, rate),  # type: ignore[arg-type]
                    chips=chip or None,
                    max_devices=max_devices,
                )
    except (ScenarioError, PriceTableError, UnknownChipError, LookupError) as exc:
        raise fail(str(exc).strip("'\""), BAD_INPUT) from None
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=1))
    elif isinstance(found, FarmCapacity):
        _print_capacity(found)
    else:
        _print_sizing(found)


def _print_sizing(plan: SizingPlan) -> None:
    table = Table(
        title=f"{plan.model}: {plan.slo.rate:g} requests/s at p99 <= {plan.slo.p99_ms:g} ms (MODELLED)",
        box=box.SIMPLE,
        pad_edge=False,
    )
    for column in ("chip", "devices", "instances", "$/h", "p99 ms", "margin", "W"):
        table.add_column(column, justify="left" if column == "chip" else "right", min_width=len(column))
    for c in plan.chips:
        table.add_row(
            c.chip,
            _n(c.devices),
            _n(c.instances),
            _n(c.usd_per_hour),
            _n(c.p99_ms),
            "-" if c.p99_margin is None else f"{c.p99_margin:.0%}",
            _n(c.mean_power_w),
        )
    console.print(table)
    for c in plan.chips:
        if c.why:
            console.print(f"  {c.chip}: {c.why}", highlight=False)
    cheapest = plan.cheapest
    if cheapest is None:
        console.print("[yellow]no priced chip meets the SLO[/yellow]")
    else:
        console.print(
            f"cheapest: {cheapest.devices} × {cheapest.chip} ({cheapest.instances} × {cheapest.instance}) "
            f"at ${cheapest.usd_per_hour:g}/h; p99 {cheapest.p99_ms:g} ms, {cheapest.capacity_margin:.0%} "
            f"capacity to spare (profiles {cheapest.profile})",
            highlight=False,
        )


def _print_capacity(found: FarmCapacity) -> None:
    if found.rate is None:
        console.print(f"[yellow]{found.farm}: {found.why}[/yellow]")
        return
    unknown = (
        f" ({found.devices_without_power} device(s) without a TDP in the catalog left out)"
        if found.devices_without_power
        else ""
    )
    console.print(
        f"{found.farm}: {found.model} on {found.devices} device(s) carries {found.rate:g} requests/s "
        f"at p99 {found.p99_at_rate_ms:g} ms (SLO {found.p99_ms:g} ms); farm power "
        f"{_n(found.mean_power_w)} W{unknown} (MODELLED)",
        highlight=False,
    )


def _n(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def register(app: typer.Typer) -> None:
    app.command("plan")(_plan)
