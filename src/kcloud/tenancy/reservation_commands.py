"""`kcloud reservations ...`: a tenant's virtual cluster, through the admin API (`/api/v1/reservations`).

Like `kcloud tenants` they talk to a running server (`--url` or `$KCLOUD_URL`) with an API key
(`--api-key` or `$KCLOUD_API_KEY`): an admin's to create and delete, a tenant's to see its own.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from kcloud.cli_errors import fail
from kcloud.tenancy.commands import _JSON, _KEY, _URL, _call, out

reservations_app = typer.Typer(
    help="Devices or nodes set aside for one tenant: its deployments go only there, nobody else's do.",
    no_args_is_help=True,
)


def covered(reservation: dict[str, Any]) -> str:
    """What a reservation names and how many devices that is now, in a few words."""
    named = [*reservation["devices"], *(f"node {node}" for node in reservation["nodes"])]
    return f"{', '.join(named)} ({len(reservation['covers'])} device(s))"


@reservations_app.command("create")
def reservations_create(
    tenant: str = typer.Option(..., "--tenant", "-t", help="The tenant the devices are set aside for."),
    devices: list[str] = typer.Option([], "--device", "-d", help="A device uid (NODE/ID); repeatable."),
    nodes: list[str] = typer.Option(
        [], "--node", "-n", help="A node: every device on it, those that join later too; repeatable."),
    note: str | None = typer.Option(None, "--note", help="Why, for whoever reads the list later."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Reserve devices or nodes for a tenant (admin). Other tenants' replicas on them move off."""
    if not devices and not nodes:
        raise fail("name what to reserve: --device UID and/or --node NAME (each repeatable)")
    body = {"tenant": tenant, "devices": devices, "nodes": nodes, "note": note}
    created = _call(url, api_key, "POST", "/api/v1/reservations", json=body)
    if as_json:
        out.print_json(json.dumps(created))
        return
    out.print(f"reservation [bold]{created['id']}[/bold] for tenant "
              f"[bold]{escape(created['tenant'])}[/bold]: {escape(covered(created))}", soft_wrap=True)
    moving = created["moving"]
    if moving:
        out.print(f"{len(moving)} replica(s) of other tenants move off (placed elsewhere first, then "
                  f"stopped): {escape(', '.join(moving))}", soft_wrap=True)


@reservations_app.command("list")
def reservations_list(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant's."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """List reservations (a tenant's key sees its own)."""
    params = {"tenant": tenant} if tenant else None
    reservations = _call(url, api_key, "GET", "/api/v1/reservations", params=params)
    if as_json:
        out.print_json(json.dumps(reservations))
        return
    table = Table(Column("id", justify="right"), Column("tenant", no_wrap=True), "devices", "nodes",
                  Column("covers", justify="right"), "note", "created")
    for r in reservations:
        table.add_row(str(r["id"]), r["tenant"], ", ".join(r["devices"]) or "-", ", ".join(r["nodes"]) or "-",
                      str(len(r["covers"])), r["note"] or "-", f"{r['created_at'][:19]} by {r['created_by']}")
    out.print(table)
    if not reservations:
        out.print("no reservations")


@reservations_app.command("delete")
def reservations_delete(
    reservation_id: int = typer.Argument(
        ..., min=1, help="The reservation's id (see `kcloud reservations list`)."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Delete a reservation (admin): its devices take any tenant's replicas again; nothing moves."""
    _call(url, api_key, "DELETE", f"/api/v1/reservations/{reservation_id}")
    out.print(f"deleted reservation {reservation_id}")


def register(app: typer.Typer) -> None:
    """Add `kcloud reservations` to the `kcloud` app."""
    app.add_typer(reservations_app, name="reservations")
