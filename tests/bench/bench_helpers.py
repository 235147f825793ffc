"""Helpers shared by the bench tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from typer.testing import CliRunner

from kcloud.cli import app

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
FARM = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"
#: An emulated FuriosaAI RNGD from the K-Cloud phase-1 example farm.
EMULATED_NPU = "naver-private-1/rngd0"


def run_cli(*args: str, env: dict[str, str] | None = None):
    """`kcloud <args>` in this process; returns click's Result (exit_code, output, stderr)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160", **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
