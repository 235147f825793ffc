"""The live view while LoadGen runs: samples issued and completed, elapsed time against the minimum."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """Two bars: elapsed vs LoadGen's minimum duration, and completed vs issued samples."""

    def __init__(self, console: Console, *, title: str, min_duration_s: float, enabled: bool = True) -> None:
        self._min_duration_s = max(min_duration_s, 1e-9)
        self._started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self._time = self._progress.add_task(
            f"{title}: time   ",
            total=self._min_duration_s,
            detail=f"0.0 s of min duration {min_duration_s:g} s",
        )
        self._samples = self._progress.add_task(f"{title}: samples", total=1, detail="issued 0, completed 0")

    def __enter__(self) -> RunProgress:
        self._started = time.monotonic()
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, issued: int, completed: int) -> None:
        elapsed = time.monotonic() - self._started
        self._progress.update(
            self._time,
            completed=min(elapsed, self._min_duration_s),
            detail=f"{elapsed:.1f} s of min duration {self._min_duration_s:g} s",
        )
        self._progress.update(
            self._samples,
            total=max(issued, 1),
            completed=completed,
            detail=f"issued {issued}, completed {completed}",
        )
