"""`kcloud twin cost`: $ per million inferences and J per inference per instance, and the AWS yardstick.

Thin: it opens the model repository, the price table and the measured profiles, calls
`kcloud.twin.cost.cost_report`, and prints a table (or JSON). A user's mistake (an unknown
model, a broken price file, a bad flag) is one red line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail
from kcloud.farm.profiles import PRECISIONS, ProfileBook, profiles_dir
from kcloud.twin.cost import CostReport, InstanceCost, cost_report
from kcloud.twin.prices import PriceTableError, bundled_price_path, load_price_table

if TYPE_CHECKING:
    from kcloud.models.config import ModelConfig

DASH = "—"


def register(app: typer.Typer) -> None:
    """Add `cost` to the `kcloud twin` group."""
    app.command("cost")(cost)


def cost(
    model: str = typer.Option(..., "--model", "-m", help="Model name in the repository."),
    precision: str | None = typer.Option(
        None, "--precision", help=f"One of {', '.join(PRECISIONS)} (default: what the emulated devices use)."
    ),
    prices: Path | None = typer.Option(
        None, "--prices", help="Price table TOML (default: the bundled, sourced one)."
    ),
    profiles: Path | None = typer.Option(
        None, "--profiles", help="Directory of measured device profiles (default: $KCLOUD_HOME/profiles)."
    ),
    utilisation: float = typer.Option(
        1.0, "--utilisation", help="Busy share of every paid hour, in (0, 1] (default 1: always busy)."
    ),
    efficiency: float | None = typer.Option(
        None,
        "--efficiency",
        help="What-if: one fraction of catalog peak for every modelled chip, in (0, 1] (default: each "
        "chip's own factor, from its MLPerf result in the catalog, else 0.4).",
    ),
    energy: str | None = typer.Option(
        None, "--energy", help="Key of the energy price row (default: the table's first priced one)."
    ),
    repo: Path | None = typer.Option(None, "--repo", help="Model repository (default: $KCLOUD_HOME/models)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """$ per million inferences and J per inference per instance kind; the '70 % cheaper' check."""
    if precision is not None and precision not in PRECISIONS:
        raise fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", BAD_INPUT)
    if not 0 < utilisation <= 1:
        raise fail(f"--utilisation must be in (0, 1], got {utilisation:g}", BAD_INPUT)
    if efficiency is not None and not 0 < efficiency <= 1:
        raise fail(f"--efficiency must be in (0, 1], got {efficiency:g}", BAD_INPUT)
    if profiles is not None and not profiles.is_dir():
        raise fail(f"--profiles {profiles}: no such directory", BAD_INPUT)
    config = _model_config(model, repo)
    try:
        table = load_price_table(prices)
        report = cost_report(
            table,
            model=model,
            flops_per_sample=config.flops_per_sample,
            weight_bytes=config.memory_bytes,
            max_batch=max(1, config.batching.max_batch_size),
            precision=precision,
            book=ProfileBook.load(profiles or profiles_dir()),
            energy_key=energy,
            utilisation=utilisation,
            efficiency=efficiency,
        )
    except PriceTableError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    except KeyError as exc:  # an unknown --energy key
        raise fail(str(exc.args[0]), BAD_INPUT) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    _print(report, prices or bundled_price_path())


def _model_config(name: str, repo: Path | None) -> ModelConfig:
    """The model's config (FLOPs, weights, batching) from the repository; an unknown model is the
    user's mistake."""
    from kcloud.models.errors import ModelFileError, ModelNotFoundError
    from kcloud.models.repository import ModelRepository, default_repository_path

    repository = ModelRepository(repo or default_repository_path())
    try:
        return repository.get(name).config
    except (ModelNotFoundError, ModelFileError) as exc:
        raise fail(str(exc).strip("'\""), BAD_INPUT) from None


def _money(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.2f}" if value >= 1 else f"{value:.4g}"


def _num(value: float | None, fmt: str = ".4g") -> str:
    return DASH if value is None else format(value, fmt)


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print(report: CostReport, prices_path: Path) -> None:
    console = _console()
    flops = _num(report.flops_per_sample, ".3g") if report.flops_per_sample else "unknown"
    energy = report.energy
    energy_words = (
        f"{energy.key}: {energy.price_per_kwh:g} {energy.currency}/kWh ({energy.as_of})"
        if energy is not None and energy.price_per_kwh is not None
        else "none"
    )
    efficiency_words = (
        "each chip's own" if report.efficiency is None else f"{report.efficiency:g} for every chip (what-if)"
    )
    table = Table(
        title=(
            f"Cost of {report.model} ({flops} FLOPs/sample, precision {report.precision or 'default'}, "
            f"utilisation {report.utilisation:.0%}, efficiency {efficiency_words}; energy {energy_words})"
        ),
        title_justify="left",
    )
    for header, justify in (
        ("instance", "left"),
        ("accelerator", "left"),
        ("count", "right"),
        ("$/h", "right"),
        ("samples/s per accel", "right"),
        ("$/M inferences", "right"),
        ("J/inference", "right"),
        ("energy $/M", "right"),
        ("figures", "left"),
        ("price source", "left"),
    ):
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(*_cells(row))
    console.print(table)
    gaps = [row for row in report.rows if row.unknown]
    if gaps:
        console.print("[bold]Unknown figures[/bold] (— in the table):")
        for row in gaps:
            console.print(f"  {escape(row.key)}: {escape('; '.join(row.unknown))}", soft_wrap=True)
    notes = [row for row in report.rows if row.notes]
    for row in notes:
        console.print(f"  note {escape(row.key)}: {escape('; '.join(row.notes))}", soft_wrap=True)
    comparison = report.comparison
    console.print(
        f"\n[bold]AWS yardstick[/bold] (seeds: 'compute up to 70 % cheaper than GPUs'): "
        f"[bold]{comparison.verdict}[/bold]. {escape(comparison.summary)}",
        soft_wrap=True,
    )
    console.print("Assumptions:")
    for line in comparison.assumptions:
        console.print(f"  - {escape(line)}", soft_wrap=True)
    console.print(
        f"Prices: {escape(str(prices_path))} (full sources: --json); every figure is labelled measured or "
        "modelled."
    )


def _cells(row: InstanceCost) -> list[str]:
    accelerator = row.accelerator or "not in catalog"
    if row.accelerator_kind:
        accelerator += f" ({row.accelerator_kind})"
    figures = row.basis if row.label else "unknown"
    return [
        escape(f"{row.provider} {row.instance_type}"),
        escape(accelerator),
        _num(row.accelerator_count, "d") if row.accelerator_count else DASH,
        _money(row.usd_per_hour),
        _num(row.samples_per_second, ",.0f") if row.samples_per_second else DASH,
        _money(row.usd_per_million),
        _num(row.joules_per_inference),
        _money(row.energy_usd_per_million),
        escape(figures),
        escape(f"{_short_source(row.price_source)}, {row.price_as_of}"),
    ]


def _short_source(source: str) -> str:
    """The source's host (the full address is in --json): the table stays readable."""
    if "://" not in source:
        return source if len(source) <= 40 else source[:39] + "…"
    return urlsplit(source.split()[0]).netloc or source
