"""The terminal view of results: one run after `bench run`, and the rows `bench compare` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcloud.bench.result import BenchResult, load_result


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:,.{digits}f}"
    return str(value)


def validity_text(result: BenchResult) -> str:
    if not result.complete:
        return "[yellow]INCOMPLETE[/]"
    validity = result.loadgen.get("validity")
    if validity == "VALID":
        return "[green]VALID[/]"
    if validity is None:
        return "[dim]n/a (accuracy run)[/]" if result.mode == "accuracy" else "[dim]null[/]"
    return f"[red]{validity}[/]"


def rows(result: BenchResult) -> list[tuple[str, Any]]:
    """(label, value) pairs shared by the run view and compare; numbers stay numbers."""
    metric = result.metric or {}
    latency = result.latency_ns
    energy = result.energy or {}
    eff = energy.get("efficiency") or {}
    accuracy = result.accuracy or {}
    modelled = " (MODELLED)" if energy.get("modelled") else ""
    out: list[tuple[str, Any]] = [
        (f"metric: {metric.get('name', '-')} [{metric.get('unit', '')}]", metric.get("value")),
        ("latency p50 [ms]", latency["p50"] / 1e6 if "p50" in latency else None),
        ("latency p90 [ms]", latency["p90"] / 1e6 if "p90" in latency else None),
        ("latency p99 [ms]", latency["p99"] / 1e6 if "p99" in latency else None),
        ("LoadGen queries", result.loadgen.get("result_query_count")),
        ("SUT samples completed", result.sut_stats.get("completed")),
        (f"energy [J]{modelled}", energy.get("joules")),
        (f"average power [W]{modelled}", energy.get("average_power_watts")),
        (f"{eff.get('name', 'efficiency')} [{eff.get('unit', '')}]{modelled}", eff.get("value")),
    ]
    if result.accuracy is not None:
        out += [
            (f"accuracy ({accuracy.get('metric')})", accuracy.get("score")),
            ("accuracy threshold", accuracy.get("threshold")),
        ]
    return out


def print_run(console: Console, path: Path) -> None:
    result = load_result(path)
    table = Table(
        title=f"{result.system} · {result.model.name} · {result.scenario} · {result.mode}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("device", escape(result.device_label))
    table.add_row("LoadGen validity", validity_text(result))
    for check, ok in (result.loadgen.get("checks") or {}).items():
        table.add_row(f"  {check}", "[green]Yes[/]" if ok else "[red]NO[/]")
    for label, value in rows(result):
        table.add_row(escape(label), fmt(value))
    if result.accuracy is not None:
        passed = result.accuracy.get("passed")
        table.add_row("accuracy target", "[green]PASS[/]" if passed else "[red]FAIL[/]")
    energy = result.energy or {}
    if energy.get("joules") is None and energy.get("reason"):
        table.add_row("energy: why null", f"[dim]{energy['reason']}[/]")
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for reason in result.loadgen.get("recommendations") or []:
        console.print(f"[dim]LoadGen recommends:[/] {reason}", highlight=False)
    console.print(f"results: {Path(result.path or path).parent}", highlight=False, soft_wrap=True)
