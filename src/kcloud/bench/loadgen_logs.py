"""Read LoadGen's own logs; the verdict and the figures are LoadGen's, never recomputed here.

- `mlperf_log_summary.txt`: the human summary. Its headline metric line, `Result is : VALID`
  and the `... satisfied : Yes/NO` checks are taken as written.
- `mlperf_log_detail.txt`: one `:::MLLOG {json}` line per event; `result_*` keys carry the same
  figures with full precision, `effective_*` keys the settings LoadGen really used, and
  `power_begin`/`power_end` the window MLPerf Power meters (used for energy).
- `mlperf_log_accuracy.json`: the response bytes of every logged sample, hex encoded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUMMARY_FILE = "mlperf_log_summary.txt"
DETAIL_FILE = "mlperf_log_detail.txt"
ACCURACY_FILE = "mlperf_log_accuracy.json"
TRACE_FILE = "mlperf_log_trace.json"

_MLLOG = ":::MLLOG "
_CHECK = re.compile(r"^\s+(.+?)\s*:\s*(Yes|NO)\s*$")
_KEY_VALUE = re.compile(r"^(.+?)\s*:\s*(.+?)\s*$")
_PERCENTILE = re.compile(r"^result_(\d+\.\d+)_percentile_(per_query_)?latency_ns$")


@dataclass
class Summary:
    """What `mlperf_log_summary.txt` states."""

    scenario: str | None = None
    mode: str | None = None
    headline_name: str | None = None
    headline_value: float | None = None
    validity: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)
    early_stopping: list[str] = field(default_factory=list)
    stats: dict[str, str] = field(default_factory=dict)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_summary(text: str) -> Summary:
    """Parse the summary. The headline is the first `name : value` line after `Mode`."""
    summary = Summary()
    section = "head"
    after_mode = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("====="):
            continue
        if line == "Recommendations:":
            section = "recommendations"
            continue
        if line.endswith("Early Stopping Result:"):  # token latencies: "TTFT ..." and "TPOT ..."
            section = "early"
            continue
        if line in ("Additional Stats", "Test Parameters Used"):
            section = "stats" if line == "Additional Stats" else "parameters"
            continue
        if line.startswith("MLPerf Results Summary"):
            continue
        check = _CHECK.match(line)
        if section == "head" and check:
            summary.checks[check.group(1)] = check.group(2) == "Yes"
            continue
        if section in ("recommendations", "early"):
            target = summary.recommendations if section == "recommendations" else summary.early_stopping
            stripped = line.strip()
            if stripped.startswith("*"):
                target.append(stripped.lstrip("* ").strip())
            elif target:
                target[-1] += " " + stripped
            continue
        kv = _KEY_VALUE.match(line)
        if not kv:
            continue
        key, value = kv.group(1).strip(), kv.group(2).strip()
        if section == "head":
            if key == "Scenario":
                summary.scenario = value
            elif key == "Mode":
                summary.mode = value
                after_mode = True
            elif key == "Result is":
                summary.validity = value
            elif after_mode and summary.headline_name is None:
                summary.headline_name, summary.headline_value = key, _number(value)
        elif section == "stats":
            summary.stats[key] = value
    return summary


def parse_detail(text: str) -> dict[str, Any]:
    """`key -> value` of every MLLOG event; a key logged twice keeps its last value.

    A truncated last line (a run killed while LoadGen was writing) is skipped, not fatal.
    """
    events: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.startswith(_MLLOG):
            continue
        try:
            event = json.loads(line[len(_MLLOG) :])
        except json.JSONDecodeError:
            continue
        events[event.get("key")] = event.get("value")
    return events


def power_window(events: dict[str, Any]) -> tuple[float, float] | None:
    """LoadGen's `power_begin`/`power_end` (UTC, `MM-DD-YYYY HH:MM:SS.mmm`) as epoch seconds."""
    begin, end = events.get("power_begin"), events.get("power_end")
    if not isinstance(begin, str) or not isinstance(end, str):
        return None
    try:
        fmt = "%m-%d-%Y %H:%M:%S.%f"
        t0 = datetime.strptime(begin, fmt).replace(tzinfo=UTC).timestamp()
        t1 = datetime.strptime(end, fmt).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return (t0, t1) if t1 >= t0 else None


def latency_stats_ns(events: dict[str, Any]) -> dict[str, float]:
    """LoadGen's latency figures: min/max/mean and its percentiles (per query for MultiStream)."""
    per_query = any(k.startswith("result_min_query_latency") for k in events)
    stats: dict[str, float] = {}
    for name in ("min", "max", "mean"):
        key = f"result_{name}_query_latency_ns" if per_query else f"result_{name}_latency_ns"
        if key in events:
            stats[name] = float(events[key])
    for key, value in events.items():
        match = _PERCENTILE.match(str(key))
        if match and bool(match.group(2)) == per_query:
            stats[f"p{float(match.group(1)):g}"] = float(value)
    return stats


_TOKEN_PERCENTILE = re.compile(
    r"^result_(?:first_token_(\d+\.\d+)_percentile_latency_ns|time_per_output_token_(\d+\.\d+)_percentile_ns)$"
)


def token_latency_stats_ns(events: dict[str, Any]) -> dict[str, dict[str, float]]:
    """LoadGen's token latencies (token-latency mode, not Offline): `{"ttft": {...}, "tpot": {...}}`
    with min/max/mean and its percentiles; empty where LoadGen logged none."""
    ttft: dict[str, float] = {}
    tpot: dict[str, float] = {}
    for name in ("min", "max", "mean"):
        if f"result_first_token_{name}_latency_ns" in events:
            ttft[name] = float(events[f"result_first_token_{name}_latency_ns"])
        # LoadGen names these "time_to_output_token"; they are its TPOT figures
        if f"result_time_to_output_token_{name}" in events:
            tpot[name] = float(events[f"result_time_to_output_token_{name}"])
    for key, value in events.items():
        match = _TOKEN_PERCENTILE.match(str(key))
        if match:
            first, per_token = match.groups()
            target, percentile = (ttft, first) if first else (tpot, per_token)
            target[f"p{float(percentile):g}"] = float(value)
    return {"ttft": ttft, "tpot": tpot} if ttft or tpot else {}


def read_accuracy_log(path: Path) -> list[tuple[int, bytes]]:
    """`(qsl_idx, response bytes)` of every logged sample, in log order."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read LoadGen's accuracy log ({exc})") from None
    return [(int(e["qsl_idx"]), bytes.fromhex(e["data"])) for e in entries]
