"""Result files under a root directory, as the console lists them: benchmark runs, twin runs.

A run is a directory holding one result file, named by its path relative to the root (the tree
`kcloud bench run --out` or `kcloud twin run --out` writes), so a name can never reach outside the
root. A result that cannot be read is listed with why, not dropped, and opening it is a 422.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from kcloud.errors import NotFoundError, UnprocessableError

Result = TypeVar("Result")


class UnreadableRun(ValueError):
    """A run's result file is not a result (unreadable, not JSON, the wrong kind); says why."""


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class RunTree(ABC, Generic[Result]):
    """The runs under `root`, newest first."""

    #: The result file each run's directory holds.
    result_file: str
    #: What a run is called in messages ("benchmark run").
    noun: str

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def load(self, path: Path) -> Result:
        """The result in the file at `path`; `UnreadableRun` when it is not one."""

    @abstractmethod
    def summary(self, run_id: str, result: Result, written: float) -> dict[str, Any]:
        """The run's row in the list."""

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        runs = []
        for path in self.root.rglob(self.result_file):
            run_id = path.parent.relative_to(self.root).as_posix()
            written = path.stat().st_mtime
            try:
                runs.append(self.summary(run_id, self.load(path), written))
            except UnreadableRun as exc:
                runs.append({"id": run_id, "error": str(exc), "written_at": iso(written)})
        return sorted(runs, key=lambda r: (r["written_at"], r["id"]), reverse=True)

    def open(self, run_id: str) -> tuple[Result, float]:
        """A run's result and when it was written: `NotFoundError` for a name outside the root or
        without a result file, `UnprocessableError` when the file is not a result."""
        root = self.root.resolve()
        path = (root / run_id).resolve() / self.result_file
        if not path.parent.is_relative_to(root) or not path.is_file():
            raise NotFoundError(f"no {self.noun} {run_id!r}")
        try:
            return self.load(path), path.stat().st_mtime
        except UnreadableRun as exc:
            raise UnprocessableError(f"{self.noun} {run_id!r}: {exc}") from None
