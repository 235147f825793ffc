"""CLI commands of this package (being written; `register` adds them to `kcloud`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `kcloud` app."""
