"""How every CLI command fails: one red line on stderr and a non-zero exit, never a traceback.

Exit code 2 is for input the user can fix (a bad flag, file or name), 1 for a failure at run
time (a server that is down, a refused request).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)

#: Exit code for bad input.
BAD_INPUT = 2


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line; return the Exit for the caller to raise."""
    err.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)
