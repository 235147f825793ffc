"""`kcloud devices`: every device on this machine and in the farm files, with a live reading.

`devices` is a command group that lists when called bare, so subcommands (e.g. `drain`, owned
by the control plane) can be added to `devices_app` later without changing how listing works.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from kcloud.cli_errors import BAD_INPUT, fail

if TYPE_CHECKING:
    from kcloud.devices.device import Device, Telemetry
    from kcloud.devices.inventory import Inventory

DASH = "—"

devices_app = typer.Typer(
    name="devices",
    help="List devices on this machine and in farm files, with live telemetry.",
    invoke_without_command=True,
    no_args_is_help=False,
)

FarmOption = typer.Option(
    None, "--farm", "-f", help="Farm file (TOML) declaring nodes and emulated devices; repeatable.",
    exists=False, dir_okay=False,
)
NodeOption = typer.Option(None, "--node", help="Name of this machine's node (default: the hostname).")
LocalOption = typer.Option(True, "--local/--no-local", help="Include this machine's real devices.")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
ServerOption = typer.Option(
    None, "--url", help="A running kcloud server (e.g. a cluster's head): its whole farm, every node's "
    "devices, as its control plane knows them, instead of this machine's.",
)
ServerKeyOption = typer.Option(None, "--api-key", envvar="KCLOUD_API_KEY", help="API key for --url.")


def wide_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is piped."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def inventory_from_cli(farm: list[Path] | None, node: str | None, local: bool) -> Inventory:
    """Build the inventory for a command; a bad farm file is one red line and exit code 2."""
    from kcloud.devices.inventory import FarmFileError, Inventory

    try:
        return Inventory.build(farm or (), node=node, include_local=local)
    except FarmFileError as exc:
        raise fail(str(exc), BAD_INPUT) from None


def _fixed(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _memory(used: int | None, total: int | None) -> str:
    if used is None and total is None:
        return DASH
    gib = 2**30
    used_gib = None if used is None else used / gib
    total_gib = None if total is None else total / gib
    return f"{_fixed(used_gib)} / {_fixed(total_gib)}"


def device_record(device: Device, telemetry: Telemetry) -> dict[str, Any]:
    """JSON form of one device and its reading: spec figures with sources, nulls with reasons."""
    return {
        "uid": device.uid,
        "id": device.id,
        "node": device.node,
        "plugin": device.plugin,
        "vendor": device.vendor,
        "name": device.name,
        "emulated": device.emulated,
        "healthy": device.healthy and telemetry.healthy,
        "memory_bytes": device.memory_bytes,
        "runtimes": list(device.runtimes),
        "attributes": dict(device.attributes),
        "spec": device.spec.model_dump(mode="json"),
        "telemetry": {
            "timestamp": telemetry.timestamp,
            "modelled": telemetry.modelled,
            "utilization": telemetry.utilization,
            "power_watts": telemetry.power_watts,
            "energy_joules": telemetry.energy_joules,
            "memory_used_bytes": telemetry.memory_used_bytes,
            "temperature_celsius": telemetry.temperature_celsius,
            "healthy": telemetry.healthy,
            "reasons": dict(telemetry.reasons),
        },
    }


def devices_table(readings: list[tuple[Device, Telemetry]]) -> Table:
    table = Table(
        title="kcloud devices",
        caption=f"* modelled, not measured (emulated device)    {DASH} no reading: --json gives the reason",
    )
    headers = ("node", "device", "vendor", "chip", "emulated", "health", "util %", "power W", "energy kJ",
               "memory GiB used/total", "temp °C")
    for header in headers:
        table.add_column(header, justify="left" if header in headers[:6] else "right")
    for device, t in readings:
        star = "*" if t.modelled else ""

        def mark(text: str) -> str:
            return text if text == DASH else text + star  # noqa: B023 - used within this iteration

        table.add_row(
            device.node,
            device.id,
            device.vendor,
            device.name,
            "[yellow]emulated[/yellow]" if device.emulated else "real",
            "[green]ok[/green]" if device.healthy and t.healthy else "[red]unhealthy[/red]",
            mark(_fixed(None if t.utilization is None else t.utilization * 100, 0)),
            mark(_fixed(t.power_watts)),
            mark(_fixed(None if t.energy_joules is None else t.energy_joules / 1000, 2)),
            mark(_memory(t.memory_used_bytes, device.memory_bytes)),
            mark(_fixed(t.temperature_celsius, 0)),
        )
    return table


def server_devices(url: str, api_key: str | None) -> list[dict[str, Any]]:
    """The devices a running server's control plane knows (`GET /api/v1/devices`), every node's."""
    from kcloud.admin_client import call_admin_api

    return list(call_admin_api(url, api_key, "GET", "/api/v1/devices"))


def device_from_view(view: dict[str, Any]) -> Device:
    """A `Device` rebuilt from the API's view of it, its chip from the catalog."""
    from kcloud.devices.catalog import load_catalog
    from kcloud.devices.device import Device

    node, _, local_id = str(view["uid"]).partition("/")
    plugin = "emulated" if view["emulated"] else view["vendor"]
    return Device(id=local_id or node, node=view["node"], plugin=plugin, vendor=view["vendor"],
                  spec=load_catalog().get(view["chip"]), name=view["name"], emulated=view["emulated"],
                  healthy=view["healthy"], memory_bytes=view["memory_bytes"])


def server_devices_table(views: list[dict[str, Any]], url: str) -> Table:
    table = Table(title=f"kcloud devices at {url}",
                  caption="as the control plane knows them; live readings: `kcloud devices` on each node")
    numbers = ("memory GiB placed/total", "replicas")
    for header in ("node", "device", "vendor", "chip", "emulated", "state", *numbers):
        table.add_column(header, justify="right" if header in numbers else "left")
    for view in views:
        if not view["present"]:
            state = "[red]gone[/red]"
        elif not view["healthy"]:
            state = f"[red]unhealthy[/red] ({view['health_reason'] or ''})"
        else:
            state = "[yellow]drained[/yellow]" if view["drained"] else "[green]ok[/green]"
        table.add_row(view["node"], str(view["uid"]).partition("/")[2], view["vendor"], view["name"],
                      "[yellow]emulated[/yellow]" if view["emulated"] else "real", state,
                      _memory(view["memory_placed_bytes"], view["memory_bytes"]), str(view["replicas"]))
    return table


@devices_app.callback()
def list_devices(
    ctx: typer.Context,
    farm: list[Path] | None = FarmOption,
    node: str | None = NodeOption,
    local: bool = LocalOption,
    as_json: bool = JsonOption,
    url: str | None = ServerOption,
    api_key: str | None = ServerKeyOption,
) -> None:
    """List devices with one live reading each (emulated devices are flagged, their figures modelled);
    with --url, every device of a running server's farm (all nodes of a cluster) and its state there."""
    if ctx.invoked_subcommand is not None:
        return
    if url is not None:
        if farm:
            raise fail("--farm and --url do not go together: --url lists the server's own farm", BAD_INPUT)
        views = server_devices(url, api_key)
        if as_json:
            typer.echo(json.dumps({"server": url, "devices": views}, indent=2, ensure_ascii=False))
        else:
            wide_console().print(server_devices_table(views, url) if views else "no devices found")
        return
    with inventory_from_cli(farm, node, local) as inventory:
        readings = inventory.sample_all()
        if as_json:
            document = {
                "farms": list(inventory.farm_names),
                "nodes": [dataclasses.asdict(n) for n in inventory.nodes],
                "devices": [device_record(d, t) for d, t in readings],
            }
            typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
            return
        console = wide_console()
        if not readings:
            console.print("no devices found")
            return
        console.print(devices_table(readings))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `kcloud` app."""
    app.add_typer(devices_app, name="devices")
