"""The terminal view of results: one run after `bench run`, and the rows `bench compare` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcloud.bench.result import BenchResult, load_result
from kcloud.bench.rules import rules_text


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


def device_model_rows(result: BenchResult) -> list[tuple[str, Any]]:
    """An emulated device's own figures, each labelled MODELLED (the host's are the rows above)."""
    model = result.device_model
    if not model:
        return []
    chip, eff = model.get("chip", "chip"), model.get("efficiency") or {}
    service = model.get("service_time_ms") or {}
    out = [(f"{chip}: service time {name.replace('_', ' ')} [ms] (MODELLED)", value)
           for name, value in service.items()]
    for key, unit in (("samples_per_second", "samples/s"), ("tokens_per_second", "tokens/s")):
        if key in model:
            out.append((f"{chip}: throughput at full load [{unit}] (MODELLED)", model[key]))
    out.append((f"{chip}: power at full load [W] (MODELLED)", model.get("power_watts")))
    name = f"{eff.get('name', 'efficiency')} [{eff.get('unit', '')}]"
    out.append((f"{chip}: {name} (MODELLED)", eff.get("value")))
    return out + under_load_rows(result)


def under_load_rows(result: BenchResult) -> list[tuple[str, Any]]:
    """The chip under this run's own load, simulated by the twin: each labelled MODELLED, apart
    from the host's measured rows (`device_model.under_load`)."""
    model = result.device_model or {}
    under = model.get("under_load")
    if not under:
        return []
    at = f"{model.get('chip', 'chip')} under this run's load"
    if under.get("latency_ms") is None:
        return [(f"{at} (MODELLED, twin)", f"null: {under.get('reason') or 'not simulated'}")]
    latency = under["latency_ms"]
    out: list[tuple[str, Any]] = [
        (f"{at}: throughput [samples/s] (MODELLED)", under.get("samples_per_second"))
    ]
    out += [(f"{at}: latency {p} [ms] (MODELLED)", latency.get(p)) for p in ("p50", "p90", "p99")]
    own = under.get("loadgen_percentile")
    if own and f"p{own['percentile']:g}" not in ("p50", "p90", "p99"):
        out.append((f"{at}: latency p{own['percentile']:g} [ms] (MODELLED)", own.get("latency_ms")))
    if own and under.get("latency_bound_ms") is not None:
        label = f"{at}: p{own['percentile']:g} within the {under['latency_bound_ms']:g} ms bound (MODELLED)"
        out.append((label, under.get("bound_met")))
    energy = under.get("energy") or {}
    eff = energy.get("efficiency") or {}
    name = f"{eff.get('name', 'efficiency')} [{eff.get('unit', '')}]"
    out.append((f"{at}: {name} (MODELLED)", eff.get("value")))
    return out


def rules_markup(result: BenchResult) -> str:
    """Whether the run's settings followed MLPerf's rules (a VALID run may not have)."""
    text = escape(rules_text(result.mlperf_rules))
    followed = (result.mlperf_rules or {}).get("followed")
    style = {True: "green", False: "yellow"}.get(followed, "dim")
    return f"[{style}]{text}[/]"


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
    if metric.get("measured_on"):  # an emulated device's run: the rows above are the host's
        out.append(("metric and latency measured on", metric["measured_on"]))
    out += token_rows(result) + device_model_rows(result)
    if accuracy.get("kind") == "chat-greedy":
        out += [
            ("accuracy: exact-match rate", accuracy.get("score")),
            ("accuracy: mean matched-prefix ratio", accuracy.get("mean_matched_prefix_ratio")),
            ("accuracy: ties (near-tie divergences)", accuracy.get("ties")),
            ("accuracy: mismatches", accuracy.get("mismatches")),
            ("accuracy: tie margin [nats]", accuracy.get("tie_margin_nats")),
        ]
    elif result.accuracy is not None:
        out += [
            (f"accuracy ({accuracy.get('metric')})", accuracy.get("score")),
            ("accuracy threshold", accuracy.get("threshold")),
        ]
    return out


def token_rows(result: BenchResult) -> list[tuple[str, Any]]:
    """A chat model's token figures: TTFT and TPOT (LoadGen's, else the SUT's), constraints."""
    tokens = result.tokens
    if not tokens:
        return []
    measured = tokens.get("sut_measured") or {}
    ttft = tokens.get("ttft_ns") or measured.get("ttft") or {}
    tpot = tokens.get("tpot_ns") or measured.get("tpot") or {}
    by = "" if tokens.get("ttft_ns") else " (SUT-measured)"
    out: list[tuple[str, Any]] = [("tokens per sample", tokens.get("tokens_per_sample"))]
    for label, stats in (("TTFT", ttft), ("TPOT", tpot)):
        for p in ("p50", "p99"):
            out.append((f"{label} {p} [ms]{by}", stats[p] / 1e6 if p in stats else None))
    constraints = tokens.get("constraints")
    if constraints:
        out += [
            (
                f"TTFT p{constraints['percentile']:g} bound [ms] met",
                f"{constraints['ttft_ms']:g}: " + ("yes" if constraints["ttft_met"] else "NO"),
            ),
            (
                f"TPOT p{constraints['percentile']:g} bound [ms] met",
                f"{constraints['tpot_ms']:g}: " + ("yes" if constraints["tpot_met"] else "NO"),
            ),
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
    table.add_row("MLPerf rules", rules_markup(result))
    for check, ok in (result.loadgen.get("checks") or {}).items():
        table.add_row(f"  {check}", "[green]Yes[/]" if ok else "[red]NO[/]")
    for label, value in rows(result):
        table.add_row(escape(label), fmt(value))
    if result.accuracy is not None:
        passed = result.accuracy.get("passed")
        label = "accuracy gate" if result.accuracy.get("kind") == "chat-greedy" else "accuracy target"
        table.add_row(label, "[green]PASS[/]" if passed else "[red]FAIL[/]")
    energy = result.energy or {}
    if energy.get("joules") is None and energy.get("reason"):
        table.add_row("energy: why null", f"[dim]{energy['reason']}[/]")
    console.print(table)
    if result.accuracy is not None and result.accuracy.get("reason"):
        console.print(f"[dim]accuracy:[/] {result.accuracy['reason']}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for reason in result.loadgen.get("recommendations") or []:
        console.print(f"[dim]LoadGen recommends:[/] {reason}", highlight=False)
    model = result.device_model or {}
    under = model.get("under_load") or {}
    if under.get("basis"):
        console.print(f"[dim]{escape(model.get('chip', 'chip'))} under this run's load, MODELLED:[/] "
                      f"{escape(under['basis'])}", highlight=False)
    if result.profile and result.profile.get("written"):
        where = result.profile["path"]
        console.print(f"[dim]measured profile (placement ranks this device by it):[/] {where}",
                      highlight=False, soft_wrap=True)
    console.print(f"results: {Path(result.path or path).parent}", highlight=False, soft_wrap=True)
