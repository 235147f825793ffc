"""Benchmark results for the console: the runs under a results root, one run, two runs side by side.

Runs are found and named as `run_tree.RunTree` says. Figures are the bench report's own
(`kcloud.bench.report.scenario_figures`) as Plotly JSON, drawn by the page: the page runs no
script it did not ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import plotly.io as pio

from kcloud.bench.compare import compare_notes, figure_rows
from kcloud.bench.errors import BenchError
from kcloud.bench.report import scenario_figures
from kcloud.bench.result import RESULT_FILE, BenchResult, load_result
from kcloud.bench.rules import rules_text
from kcloud.console.run_tree import RunTree, UnreadableRun, iso


def _summary(run_id: str, result: BenchResult, written: float) -> dict[str, Any]:
    metric = result.metric or {}
    return {
        "id": run_id,
        "written_at": iso(written),
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


class BenchRuns(RunTree[BenchResult]):
    """`kcloud bench run` results under a root (`$KCLOUD_HOME/bench` by default)."""

    result_file = RESULT_FILE
    noun = "benchmark run"

    def load(self, path: Path) -> BenchResult:
        try:
            return load_result(path)
        except BenchError as exc:
            raise UnreadableRun(str(exc)) from None

    def summary(self, run_id: str, result: BenchResult, written: float) -> dict[str, Any]:
        return _summary(run_id, result, written)

    def show(self, run_id: str) -> dict[str, Any]:
        """One run: its summary, its figures as rows, its plots and notes."""
        result, written = self.open(run_id)
        rows = [{"label": r["label"], "value": r["a"]} for r in figure_rows(result, result)]
        return {**_summary(run_id, result, written), "rows": rows, "notes": list(result.notes),
                **_plots([result])}

    def compare(self, a_id: str, b_id: str) -> dict[str, Any]:
        """Two runs side by side: each figure of both with which way is better, and their plots together."""
        (a, a_written), (b, b_written) = self.open(a_id), self.open(b_id)
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
