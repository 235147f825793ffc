"""`kcloud twin ...`: the digital twin's commands; each part registers its own."""

from __future__ import annotations

import typer

from kcloud.twin import cost_commands, plan_commands, run_commands

twin_app = typer.Typer(
    name="twin",
    help="Predict what a farm does under a load: throughput, latency, power, energy and cost (modelled).",
    no_args_is_help=True,
)

for module in (run_commands, plan_commands, cost_commands):
    module.register(twin_app)


def register(app: typer.Typer) -> None:
    app.add_typer(twin_app)
