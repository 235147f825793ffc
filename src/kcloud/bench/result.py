"""`result.json`: one benchmark run, as kcloud's `BenchmarkRun` noun.

Written next to LoadGen's own logs in `<out>/<system>/<model>/<scenario>/<mode>/`. Every figure
in it is LoadGen's (metric, latencies, validity, copied from its logs), a measurement
(energy counters, accuracy scored from LoadGen's accuracy log) or `null` with a reason. A run
that did not finish says `"complete": false` and never carries a validity.

The file is replaced atomically (temporary file + rename), so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kcloud.bench.errors import BenchError

RESULT_FILE = "result.json"
TIMINGS_FILE = "kcloud_sut_timings.npz"
SCHEMA = "kcloud.bench.result/1"

#: Metric per scenario in MLPerf's terms: what LoadGen's summary headline reports.
SCENARIO_METRIC: dict[str, tuple[str, str]] = {
    "Offline": ("samples_per_second", "samples/s"),
    "Server": ("completed_samples_per_second", "samples/s"),
    "SingleStream": ("p90_latency_ms", "ms"),
    "MultiStream": ("p99_latency_ms", "ms"),
}


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: int | None = None
    sha256: str | None = None


class BenchResult(BaseModel):
    """The fields report and compare rely on; everything else is kept as written."""

    model_config = ConfigDict(extra="allow")

    schema_: str = SCHEMA
    complete: bool
    system: str
    model: ModelRef
    scenario: str
    mode: str
    sut: dict[str, Any]
    loadgen: dict[str, Any] = {}
    #: Whether the settings followed MLPerf's rules, and which did not (`kcloud.bench.rules`);
    #: None in results written before kcloud recorded it.
    mlperf_rules: dict[str, Any] | None = None
    metric: dict[str, Any] | None = None
    latency_ns: dict[str, float] = {}
    throughput: dict[str, float] = {}
    sut_stats: dict[str, Any] = {}
    accuracy: dict[str, Any] | None = None
    #: Chat models' performance runs: tokens per second, TTFT and TPOT (`kcloud.bench.llm_run`).
    tokens: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    #: An emulated device's own figures, all modelled (`kcloud.bench.device_model`); None on real ones.
    device_model: dict[str, Any] | None = None
    #: The measured profile the run wrote for placement (`kcloud.bench.profile`), or why none.
    profile: dict[str, Any] | None = None
    settings: dict[str, Any] = {}
    environment: dict[str, Any] = {}
    notes: list[str] = []
    #: Where it was read from (set by `load_result`, never written).
    path: str | None = None

    @property
    def validity(self) -> str | None:
        return self.loadgen.get("validity") if self.complete else None

    @property
    def device_label(self) -> str:
        device = self.sut.get("device") or {}
        if self.sut.get("kind") == "network":
            return f"{self.sut.get('url')} (network)"
        label = f"{device.get('uid', '?')} {device.get('name', '')}".strip()
        return label + (" [emulated]" if device.get("emulated") else "")


def write_result(directory: Path, data: dict[str, Any]) -> Path:
    """Write `result.json` atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULT_FILE
    fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_jsonable)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def find_results(paths: list[Path]) -> list[Path]:
    """`result.json` files under each path (a run directory or any parent of run directories)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file() and path.name == RESULT_FILE:
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(RESULT_FILE)))
        else:
            raise BenchError(f"{path}: no such run directory or result.json")
    if not found:
        raise BenchError(f"no {RESULT_FILE} under {', '.join(str(p) for p in paths)}")
    return found


def load_result(path: Path) -> BenchResult:
    """Read one `result.json`; a file that is not one is a `BenchError` naming it."""
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: not found (is it a `kcloud bench run` directory?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: not a kcloud bench result (a JSON object is expected)")
    data["schema_"] = data.pop("schema", SCHEMA)
    try:
        result = BenchResult.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BenchError(f"{path}: not a kcloud bench result ({where}: {first['msg']})") from None
    result.path = str(path)
    return result
