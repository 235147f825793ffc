"""`kcloud farm`: the capacity summary of this machine plus any farm files.

A command group that summarises when called bare, so control-plane subcommands can join
`farm_app` later.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail
from kcloud.devices.commands import (
    FarmOption,
    JsonOption,
    LocalOption,
    NodeOption,
    ServerKeyOption,
    ServerOption,
    device_from_view,
    inventory_from_cli,
    server_devices,
    wide_console,
)

farm_app = typer.Typer(
    name="farm",
    help="Capacity of the farm: PFLOPS, POPS and TDP by vendor, chip and node; unknowns shown as unknown.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _capacity_table(title: str, groups: dict, first: str) -> Table:
    from kcloud.farm.capacity import FIGURES

    table = Table(title=title)
    table.add_column(first)
    table.add_column("devices", justify="right")
    table.add_column("emulated", justify="right")
    for _, (label, unit, _) in FIGURES.items():
        table.add_column(f"{label} {unit}", justify="right")
    for name, group in groups.items():
        table.add_row(
            name, str(group.devices), str(group.emulated),
            *(_cell(group.totals[figure]) for figure in FIGURES),
        )
    return table


def _cell(total) -> str:
    text = total.display(unit=False)
    return f"[yellow]{text}[/yellow]" if not total.complete else text


@farm_app.callback()
def farm_summary(
    ctx: typer.Context,
    farm: list[Path] | None = FarmOption,
    node: str | None = NodeOption,
    local: bool = LocalOption,
    as_json: bool = JsonOption,
    url: str | None = ServerOption,
    api_key: str | None = ServerKeyOption,
) -> None:
    """Summarise capacity: totals, then by vendor, chip and node. A total with unknowns reads '≥ X'.
    With --url, the capacity of a running server's whole farm (every node of a cluster)."""
    if ctx.invoked_subcommand is not None:
        return
    if url is not None:
        if farm:
            raise fail("--farm and --url do not go together: --url sums the server's own farm", BAD_INPUT)
        devices = [device_from_view(view) for view in server_devices(url, api_key) if view["present"]]
        _print_capacity(devices, [url], as_json)
        return
    with inventory_from_cli(farm, node, local) as inventory:
        _print_capacity(inventory.devices, list(inventory.farm_names), as_json)


def _print_capacity(devices: list, farm_names: list[str], as_json: bool) -> None:
    from kcloud.farm.capacity import FIGURES, capacity_report

    report = capacity_report(devices)
    if as_json:
        document = {"farms": farm_names, **report.model_dump(mode="json")}
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    console = wide_console()
    name = ", ".join(farm_names) or "this machine"
    console.print(f"[bold]farm:[/bold] {name}   {report.devices} devices "
                  f"({report.emulated} emulated) on {len(report.by_node)} nodes")
    for figure, (label, _, _) in FIGURES.items():
        console.print(f"  {label:<10} {report.totals[figure].display()}")
    console.print(_capacity_table("by vendor", report.by_vendor, "vendor"))
    console.print(_capacity_table("by chip", report.by_chip, "chip"))
    console.print(_capacity_table("by node", report.by_node, "node"))
    unknown = {f: items for f, items in report.unknown.items() if items}
    if unknown:
        console.print("[bold]unknown figures[/bold] (no sourced catalog value; never counted as zero):")
        for figure, items in unknown.items():
            chips: dict[str, int] = {}
            for item in items:
                chips[item.chip] = chips.get(item.chip, 0) + 1
            listed = ", ".join(f"{chip} x{count}" for chip, count in chips.items())
            console.print(f"  {FIGURES[figure][0]}: {listed}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `kcloud` app."""
    app.add_typer(farm_app, name="farm")
