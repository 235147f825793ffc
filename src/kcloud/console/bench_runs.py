"""Benchmark results for the console: the runs under a results root, one run, two runs side by side.

A run is named by its directory relative to the root (`kcloud bench run --out`'s tree), so a name
can never reach outside it. Figures are the bench report's own (`kcloud.bench.report.scenario_figures`)
as Plotly JSON, drawn by the page: the page runs no script it did not ship.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import plotly.io as pio

from kcloud.bench.compare import compare_notes, figure_rows
from kcloud.bench.errors import BenchError
from kcloud.bench.report import scenario_figures
from kcloud.bench.result import RESULT_FILE, BenchResult, load_result
from kcloud.bench.rules import rules_text
from kcloud.errors import NotFoundError, UnprocessableError


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _summary(run_id: str, result: BenchResult, written: float) -> dict[str, Any]:
    metric = result.metric or {}
    return {
        "id": run_id,
        "written_at": _iso(written),
        "system": result.system,
        "model": result.model.name,
        "model_version": result.model.version,
        "scenario": result.scenario,
        "mode": result.mode,
        "device": result.device_label,
        "complete": result.complete,
        "validity": result.validity,
        "mlperf_rules": rules_text(result.mlperf_rules),
        "rules_followed": (result.mlperf_rules or {}).get("followed"),
        "metric": metric.get("name"),
        "value": metric.get("value"),
        "unit": metric.get("unit"),
        "modelled_energy": bool((result.energy or {}).get("modelled")),
    }


class BenchRuns:
    """The runs under `root`, newest first; unreadable results are listed with why, not dropped."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        runs = []
        for path in self.root.rglob(RESULT_FILE):
            run_id = path.parent.relative_to(self.root).as_posix()
            written = path.stat().st_mtime
            try:
                runs.append(_summary(run_id, load_result(path), written))
            except BenchError as exc:
                runs.append({"id": run_id, "error": str(exc), "written_at": _iso(written)})
        return sorted(runs, key=lambda r: (r["written_at"], r["id"]), reverse=True)

    def _load(self, run_id: str) -> tuple[BenchResult, float]:
        root = self.root.resolve()
        path = (root / run_id).resolve()
        if not path.is_relative_to(root) or not (path / RESULT_FILE).is_file():
            raise NotFoundError(f"no benchmark run {run_id!r}")
        try:
            return load_result(path / RESULT_FILE), (path / RESULT_FILE).stat().st_mtime
        except BenchError as exc:  # a result that is not one: the run exists, its file cannot be read
            raise UnprocessableError(f"benchmark run {run_id!r}: {exc}") from None

    def show(self, run_id: str) -> dict[str, Any]:
        """One run: its summary, its figures as rows, its plots and notes."""
        result, written = self._load(run_id)
        rows = [{"label": r["label"], "value": r["a"]} for r in figure_rows(result, result)]
        return {**_summary(run_id, result, written), "rows": rows, "notes": list(result.notes),
                **_plots([result])}

    def compare(self, a_id: str, b_id: str) -> dict[str, Any]:
        """Two runs side by side: each figure of both with which way is better, and their plots together."""
        (a, a_written), (b, b_written) = self._load(a_id), self._load(b_id)
        return {
            "a": _summary(a_id, a, a_written),
            "b": _summary(b_id, b, b_written),
            "rows": figure_rows(a, b),
            "notes": compare_notes(a, b),
            **_plots([a, b]),
        }


def _plots(results: list[BenchResult]) -> dict[str, Any]:
    figures: list[Any] = []
    notes: list[str] = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        drawn, why = scenario_figures(scenario, [r for r in results if r.scenario == scenario])
        figures += [orjson.loads(pio.to_json(f, validate=False)) for f in drawn]
        notes += why
    return {"figures": figures, "figure_notes": notes}
