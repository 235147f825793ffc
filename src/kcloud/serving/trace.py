"""A recorded trace of the requests the gateway receives: when each came and how many rows it
carried, for `kcloud twin run` to replay (`kcloud up --record-trace FILE`).

No content is recorded: a line is `t_s,rows,model`, with `t_s` the seconds since recording
began. Lines are buffered and written by the event loop's thread; the file is complete once the
gateway stops (and flushed about every 64 KiB before that).
"""

from __future__ import annotations

import time
from pathlib import Path

HEADER = "t_s,rows,model\n"


class TraceFileError(ValueError):
    """The trace file cannot be written; the message names it."""


class TraceRecorder:
    """Appends one line per request to a CSV trace file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8", buffering=1 << 16)
        except OSError as exc:
            raise TraceFileError(f"cannot write the trace {path}: {exc.strerror or exc}") from None
        self._file.write(HEADER)
        self._start = time.monotonic()

    def record(self, model: str, rows: int) -> None:
        self._file.write(f"{time.monotonic() - self._start:.6f},{rows},{model}\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
