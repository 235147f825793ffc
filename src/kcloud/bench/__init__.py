"""kcloud.bench: MLPerf LoadGen verification of devices and deployments.

`prepare_run` checks a `RunRequest` (every user mistake is a `BenchError` before LoadGen starts),
`execute_run` runs LoadGen and writes the run directory; `load_result` reads a `result.json`.
The names load on first use, so that `kcloud --help` does not import LoadGen and onnxruntime.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BenchError": "kcloud.bench.errors",
    "BenchInterrupted": "kcloud.bench.errors",
    "BenchResult": "kcloud.bench.result",
    "load_result": "kcloud.bench.result",
    "RunRequest": "kcloud.bench.runner",
    "execute_run": "kcloud.bench.runner",
    "prepare_run": "kcloud.bench.runner",
    "BenchSettings": "kcloud.bench.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kcloud.bench' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
