"""Errors of `kcloud bench`, apart so that the CLI can tell a user's mistake from a crash."""

from __future__ import annotations


class BenchError(Exception):
    """Bad input found before LoadGen starts (unknown model, device or scenario, bad config,
    unreachable gateway, a data set that does not fit the model). The CLI prints it as one line
    and exits with code 2; nothing has been written to the run directory yet."""


class BenchInterrupted(Exception):
    """The run was stopped (Ctrl-C) while LoadGen was running; `result.json` says incomplete."""

    def __init__(self, result_path: str) -> None:
        super().__init__(f"run interrupted; incomplete result written to {result_path}")
        self.result_path = result_path
