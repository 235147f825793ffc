"""The `kcloud` command. Thin on purpose: each package registers its own commands."""

from __future__ import annotations

import logging
import os

import typer

from kcloud import __version__
from kcloud.app import commands as app_commands
from kcloud.bench import commands as bench_commands
from kcloud.cluster import commands as cluster_commands
from kcloud.devices import commands as device_commands
from kcloud.farm import commands as farm_commands
from kcloud.farm import deploy_commands
from kcloud.models import commands as model_commands
from kcloud.serving import commands as serving_commands
from kcloud.tenancy import commands as tenancy_commands
from kcloud.tenancy import reservation_commands
from kcloud.twin import commands as twin_commands

app = typer.Typer(
    name="kcloud",
    help="Turn a farm of heterogeneous AI accelerators into a cloud AI service.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

for module in (device_commands, farm_commands, model_commands, app_commands, serving_commands, bench_commands,
               tenancy_commands, reservation_commands, deploy_commands, cluster_commands,
               twin_commands):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kcloud {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else os.environ.get("KCLOUD_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
