"""`kcloud bench compare A B`: two runs side by side in the terminal, with deltas.

A delta is coloured by whether it is better or worse for that figure (throughput, efficiency and
accuracy: higher is better; latency, energy and power: lower is better). A figure that is
`null` on either side has no delta: unknown stays unknown. Modelled (emulated) figures are
marked on the row, so a modelled joule is never read against a measured one unawares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcloud.bench.result import BenchResult, load_result
from kcloud.bench.summary import fmt, rows, rules_markup, validity_text

_LOWER_IS_BETTER = (
    "latency",
    "energy [J]",
    "average power",
    "millijoules_per_query",
    "joules_per_token",
    "TTFT",
    "TPOT",
    "mismatches",
    "service time",
    "power at full load",
)


def _lower_is_better(label: str, result: BenchResult) -> bool:
    if label.startswith("metric:"):
        return (result.metric or {}).get("unit") == "ms"
    return any(key in label for key in _LOWER_IS_BETTER)


def _delta(a: object, b: object, lower_better: bool) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or isinstance(a, bool):
        return ""
    diff = float(b) - float(a)
    pct = f" ({diff / a * 100:+.1f}%)" if a else ""
    if diff == 0:
        return f"0{pct}"
    better = diff < 0 if lower_better else diff > 0
    colour = "green" if better else "red"
    return f"[{colour}]{diff:+,.4g}{pct}[/]"


def compare_runs(console: Console, a_path: Path, b_path: Path) -> None:
    a, b = load_result(a_path), load_result(b_path)
    table = Table(title="kcloud bench compare", title_justify="left")
    table.add_column("")
    table.add_column(f"A: {Path(a.path or a_path).parent}", justify="right", overflow="fold")
    table.add_column(f"B: {Path(b.path or b_path).parent}", justify="right", overflow="fold")
    table.add_column("B - A", justify="right")
    for label, get in (
        ("system", lambda r: r.system),
        ("device", lambda r: r.device_label),
        ("model", lambda r: f"{r.model.name} v{r.model.version}"),
        ("scenario / mode", lambda r: f"{r.scenario} / {r.mode}"),
    ):
        table.add_row(label, escape(get(a)), escape(get(b)), "")
    table.add_row("LoadGen validity", validity_text(a), validity_text(b), "")
    table.add_row("MLPerf rules", rules_markup(a), rules_markup(b), "")
    for row in figure_rows(a, b):
        va, vb = row["a"], row["b"]
        table.add_row(escape(row["label"]), fmt(va), fmt(vb), _delta(va, vb, row["lower_is_better"]))
    console.print(table)
    for note in compare_notes(a, b):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def figure_rows(a: BenchResult, b: BenchResult) -> list[dict[str, Any]]:
    """Each figure of either run: label, A's value, B's value and which way is better."""
    rows_a, rows_b = dict(rows(a)), dict(rows(b))
    return [
        {"label": label, "a": rows_a.get(label), "b": rows_b.get(label),
         "lower_is_better": _lower_is_better(label, a)}
        for label in dict.fromkeys([*rows_a, *rows_b])
    ]


def compare_notes(a: BenchResult, b: BenchResult) -> list[str]:
    """What a reader must know before reading B against A."""
    notes = []
    if (a.scenario, a.mode) != (b.scenario, b.mode):
        notes.append(f"different scenarios or modes ({a.scenario}/{a.mode} vs {b.scenario}/{b.mode}): "
                     "their metrics are not the same measure")
    if a.model.sha256 and b.model.sha256 and a.model.sha256 != b.model.sha256:
        notes.append("the two runs used different model files (sha256 differs)")
    for side, result in (("A", a), ("B", b)):
        if not result.complete:
            notes.append(f"run {side} is incomplete (interrupted); its figures are partial")
    return notes
