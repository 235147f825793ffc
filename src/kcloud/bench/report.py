"""`kcloud bench report`: one self-contained HTML file over one run or many.

The page holds plotly.js itself (no CDN, opens offline) and, per scenario, a table of the runs
and plots drawn with plotly: the latency distribution of each run, and throughput and energy
efficiency compared across devices and systems. Each plot says where its numbers come from:
- latency distribution: the per-sample times kcloud's SUT recorded (`kcloud_sut_timings.npz`:
  from LoadGen's `issue_query` to `QuerySamplesComplete`), with LoadGen's own percentiles from
  `mlperf_log_detail.txt` marked on top;
- throughput, latency metric, validity: LoadGen's summary, via `result.json`;
- efficiency: the energy counters; for an emulated device the chip's own modelled figure
  (`device_model`, labelled MODELLED: the twin's under the run's load where it has one, else the
  chip's at full load), never the host's samples over modelled joules; runs without a reading are
  listed with the reason instead of being drawn as zero;
- an emulated device's figures under the run's load (`device_model.under_load`: throughput,
  latency percentiles, the latency bound, energy) in a table of their own, each MODELLED by the
  twin and naming its basis, apart from the host's measured ones.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kcloud import __version__
from kcloud.bench.errors import BenchError
from kcloud.bench.result import TIMINGS_FILE, BenchResult, find_results, load_result
from kcloud.bench.rules import rules_text
from kcloud.bench.settings import SCENARIOS
from kcloud.bench.summary import fmt

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2733; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
th { background: #f3f5f8; } td.l, th.l { text-align: left; }
.VALID { color: #137333; font-weight: 600; } .INVALID { color: #b3261e; font-weight: 600; }
.INCOMPLETE { color: #a05a00; font-weight: 600; } .modelled { color: #7a4fbf; font-weight: 600; }
.note { color: #555; font-size: 0.85em; } .plot { margin: 8px 0 24px; } .scroll { overflow-x: auto; }
"""


_COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#6e7781")


def _label(result: BenchResult) -> str:
    return f"{result.system} · {result.device_label}"


def _validity(result: BenchResult) -> str:
    if not result.complete:
        return "INCOMPLETE"
    return result.loadgen.get("validity") or ("n/a (accuracy)" if result.mode == "accuracy" else "null")


def _efficiency(result: BenchResult) -> tuple[dict[str, Any], bool, str | None]:
    """(MLPerf Power's figure, modelled?, why it is null): an emulated device's own modelled
    figure (`device_model`: under the run's load, as a real device's is measured, where the twin
    gave one; else at full load), else the energy counters'. Never the host's samples over a
    modelled chip's joules."""
    if result.device_model:
        model = result.device_model
        under = ((model.get("under_load") or {}).get("energy") or {}).get("efficiency") or {}
        if under.get("value") is not None:
            return under, True, None
        return model.get("efficiency") or {}, True, model.get("reason")
    energy = result.energy or {}
    return energy.get("efficiency") or {}, bool(energy.get("modelled")), energy.get("reason")


def _timings(result: BenchResult) -> np.ndarray | None:
    if not result.path:
        return None
    path = Path(result.path).parent / TIMINGS_FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return np.asarray(data["latency_ns"], dtype=np.float64) / 1e6
    except (OSError, KeyError, ValueError):
        return None


def _cell(value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape(value if isinstance(value, str) else fmt(value))}</td>"


def _table(results: list[BenchResult]) -> str:
    head = [
        "system",
        "device",
        "model",
        "mode",
        "LoadGen validity",
        "MLPerf rules",
        "metric",
        "value",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "accuracy",
        "target",
        "energy J",
        "efficiency",
        "run",
    ]
    out = [
        "<table><tr>"
        + "".join(f'<th class="l">{h}</th>' if i < 7 else f"<th>{h}</th>" for i, h in enumerate(head))
        + "</tr>"
    ]
    for r in results:
        metric = r.metric or {}
        lat = r.latency_ns
        energy = r.energy or {}
        eff, modelled, why = _efficiency(r)
        acc = r.accuracy or {}
        eff_text = (
            f"{fmt(eff.get('value'))} {eff.get('unit', '')}"
            if eff.get("value") is not None
            else f"null ({why or 'not measured'})"
        )
        cls = "modelled" if modelled else ""
        acc_text = (
            ""
            if r.accuracy is None
            else f"{fmt(acc.get('score'), 4)} {'PASS' if acc.get('passed') else 'FAIL'}"
        )
        out.append(
            "<tr>"
            + _cell(r.system, "l")
            + _cell(r.device_label, "l")
            + _cell(f"{r.model.name} v{r.model.version}", "l")
            + _cell(r.mode, "l")
            + _cell(_validity(r), "l " + _validity(r).split(" ")[0])
            + _cell(rules_text(r.mlperf_rules), "l")
            + _cell(f"{metric.get('name', '')} [{metric.get('unit', '')}]", "l")
            + _cell(fmt(metric.get("value")) + (" (host)" if r.device_model else ""))
            + "".join(_cell(lat[k] / 1e6 if k in lat else None) for k in ("p50", "p90", "p99"))
            + _cell(acc_text)
            + _cell(acc.get("threshold"))
            + _cell(
                (f"{fmt(energy.get('joules'))}" + (" MODELLED" if energy.get("modelled") else ""))
                if energy else "null",
                cls,
            )
            + _cell(eff_text + (" MODELLED" if modelled and eff.get("value") is not None else ""), cls)
            + _cell(str(Path(r.path).parent) if r.path else "", "l")
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def _twin_table(results: list[BenchResult]) -> str:
    """Emulated devices: the chip under each run's own load, as the twin models it (never the host's)."""
    emulated = [r for r in results if r.device_model and r.device_model.get("under_load")]
    if not emulated:
        return ""
    head = ["system", "chip", "model", "mode", "twin: load, batching", "samples/s", "p50 ms", "p90 ms",
            "p99 ms", "LoadGen percentile", "latency bound", "efficiency"]
    out = ["<table><tr>" + "".join(f'<th class="l">{h}</th>' if i < 5 else f"<th>{h}</th>"
                                   for i, h in enumerate(head)) + "</tr>"]
    for r in emulated:
        model = r.device_model or {}
        under = model["under_load"]
        cells = (_cell(r.system, "l") + _cell(model.get("chip", ""), "l")
                 + _cell(f"{r.model.name} v{r.model.version}", "l") + _cell(r.mode, "l"))
        latency = under.get("latency_ms")
        if latency is None:
            why = html.escape(f"null: {under.get('reason') or 'not simulated'}")
            out.append(f"<tr>{cells}<td class='l modelled' colspan='{len(head) - 4}'>{why}</td></tr>")
            continue
        own = under.get("loadgen_percentile")
        bound = under.get("latency_bound_ms")
        eff = (under.get("energy") or {}).get("efficiency") or {}
        out.append(
            "<tr>" + cells
            + _cell(under.get("basis") or "", "l")
            + _cell(under.get("samples_per_second"), "modelled")
            + "".join(_cell(latency.get(p), "modelled") for p in ("p50", "p90", "p99"))
            + _cell(f"p{own['percentile']:g}: {fmt(own['latency_ms'])} ms" if own else "none", "modelled")
            + _cell("none" if bound is None else
                    f"{bound:g} ms: {'met' if under.get('bound_met') else 'MISSED'}", "modelled")
            + _cell(f"{fmt(eff.get('value'))} {eff.get('unit', '')}", "modelled")
            + "</tr>"
        )
    out.append(
        "</table><p class='note'>Emulated devices: the chip's own figures under each run's load, all "
        "MODELLED by the digital twin (kcloud.twin: the run's LoadGen load through the replica's batcher "
        "over the chip's catalog-modelled service times; energy from its power model over the modelled "
        "time). The table above holds the host's measured figures for the same runs.</p>"
    )
    return "".join(out)


def _token_table(results: list[BenchResult]) -> str:
    """Chat models: LoadGen's token figures (SUT-measured where LoadGen has none) and the accuracy gate."""
    chat = [r for r in results if r.tokens or (r.accuracy or {}).get("kind") == "chat-greedy"]
    if not chat:
        return ""
    head = [
        "system",
        "model",
        "mode",
        "tokens/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "bounds (ms)",
        "J/token",
        "exact match",
        "prefix ratio",
        "ties",
        "gate",
    ]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in chat:
        tokens = r.tokens or {}
        measured = tokens.get("sut_measured") or {}
        ttft = tokens.get("ttft_ns") or measured.get("ttft") or {}
        tpot = tokens.get("tpot_ns") or measured.get("tpot") or {}
        bounds = tokens.get("constraints")
        eff = (r.energy or {}).get("efficiency") or {}
        acc = r.accuracy or {}
        out.append(
            "<tr>"
            + _cell(r.system, "l")
            + _cell(r.model.name, "l")
            + _cell(r.mode, "l")
            + _cell((r.metric or {}).get("value") if r.tokens else None)
            + "".join(
                _cell(stats[p] / 1e6 if p in stats else None)
                for stats in (ttft, tpot)
                for p in ("p50", "p99")
            )
            + _cell(
                f"TTFT {bounds['ttft_ms']:g} {'met' if bounds['ttft_met'] else 'MISSED'}, "
                f"TPOT {bounds['tpot_ms']:g} {'met' if bounds['tpot_met'] else 'MISSED'}"
                if bounds
                else ""
            )
            + _cell(eff.get("value") if eff.get("name") == "joules_per_token" else None)
            + _cell(acc.get("score") if acc else None)
            + _cell(acc.get("mean_matched_prefix_ratio") if acc else None)
            + _cell(acc.get("ties") if acc else None)
            + _cell(("PASS" if acc.get("passed") else "FAIL") if acc else "")
            + "</tr>"
        )
    out.append(
        "</table><p class='note'>Chat models: tokens/s, TTFT and TPOT are LoadGen's (token-latency "
        "mode); Offline has no LoadGen token latencies, so those columns are the SUT's own. The "
        "gate: every prompt matches the greedy reference or first diverges at a near tie.</p>"
    )
    return "".join(out)


#: Quantiles drawn per run: the empirical CDF at these points is exact and keeps the file small.
_QUANTILES = np.concatenate([np.linspace(0.0, 0.9, 91), np.linspace(0.9, 0.999, 100)[1:], [0.9995, 1.0]])


def _latency_figure(scenario: str, heading: str, results: list[BenchResult]) -> go.Figure | None:
    """Empirical CDF of each run's per-sample latency, LoadGen's percentiles as diamonds."""
    fig = go.Figure()
    drawn = False
    for index, r in enumerate(results):
        values = _timings(r)
        if values is None or not len(values):
            continue
        drawn = True
        name = _label(r)
        colour = _COLOURS[index % len(_COLOURS)]
        fig.add_trace(
            go.Scatter(
                x=np.quantile(values, _QUANTILES),
                y=_QUANTILES * 100,
                mode="lines",
                name=name,
                line={"color": colour},
                legendgroup=name,
            )
        )
        lat = r.latency_ns
        points = [(float(k[1:]), lat[k] / 1e6) for k in ("p50", "p90", "p99") if k in lat]
        if points:
            fig.add_trace(
                go.Scatter(
                    x=[v for _, v in points],
                    y=[p for p, _ in points],
                    mode="markers",
                    marker={
                        "symbol": "diamond",
                        "size": 10,
                        "color": colour,
                        "line": {"color": "black", "width": 1},
                    },
                    name=f"{name}: LoadGen p50/p90/p99",
                    legendgroup=name,
                    showlegend=False,
                )
            )
    if not drawn:
        return None
    unit = "per query, " if scenario == "MultiStream" else ""
    fig.update_layout(
        title=(
            f"{heading}: latency distribution (lines: kcloud SUT per-sample timings, {TIMINGS_FILE}; "
            f"◆: LoadGen's {unit}percentiles, mlperf_log_detail.txt)"
        ),
        xaxis={"title": "latency [ms] (log scale)", "type": "log"},
        yaxis={"title": "percentile"},
        height=420,
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def _bar(title: str, axis: str, bars: list[tuple[str, float, bool]]) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=[value for _, value, _ in bars],
            y=[label for label, _, _ in bars],
            orientation="h",
            marker={
                "color": ["#7a4fbf" if modelled else "#1f6feb" for _, _, modelled in bars],
                "pattern": {"shape": ["/" if modelled else "" for _, _, modelled in bars]},
            },
            text=[f"{value:,.4g}{' MODELLED' if modelled else ''}" for _, value, modelled in bars],
            textposition="auto",
        )
    )
    fig.update_layout(title=title, xaxis_title=axis, height=200 + 50 * len(bars), margin={"l": 260})
    return fig


def _performance_figures(
    scenario: str, heading: str, results: list[BenchResult]
) -> tuple[list[go.Figure], list[str]]:
    figures: list[go.Figure] = []
    notes: list[str] = []
    perf = [r for r in results if r.mode == "performance" and r.metric and r.metric.get("value") is not None]
    if perf:
        unit = perf[0].metric["unit"]  # type: ignore[index]
        name = perf[0].metric["name"]  # type: ignore[index]
        better = "lower is better" if unit == "ms" else "higher is better"
        figures.append(
            _bar(
                f"{heading}: {name} across devices and systems ({better}; LoadGen summary)",
                f"{name} [{unit}]",
                [
                    (f"{_label(r)} [{_validity(r)}]", float(r.metric["value"]), False)  # type: ignore[index]
                    for r in perf
                ],
            )
        )
    effs = []
    for r in results:
        if r.mode != "performance":
            continue
        eff, modelled, why = _efficiency(r)
        if eff.get("value") is None:
            notes.append(f"{_label(r)}: efficiency null — {why or 'no energy reading'}")
            continue
        effs.append((r, eff, modelled))
    if effs:
        unit, name = effs[0][1]["unit"], effs[0][1]["name"]
        better = (
            "lower is better" if name in ("millijoules_per_query", "joules_per_token") else "higher is better"
        )
        figures.append(
            _bar(
                f"{heading}: energy efficiency, {name} ({better}; purple = MODELLED, emulated device, "
                "by the twin at the run's load)",
                f"{name} [{unit}]",
                [(_label(r), float(e["value"]), modelled) for r, e, modelled in effs],
            )
        )
    return figures, notes


def scenario_figures(scenario: str, runs: list[BenchResult]) -> tuple[list[go.Figure], list[str]]:
    """The report's plots of one scenario's runs, and why a plot is missing. One set per model: a
    metric is only comparable across devices for one model. The console draws the same figures."""
    figures: list[go.Figure] = []
    notes: list[str] = []
    for model in sorted({r.model.name for r in runs}):
        mine = [r for r in runs if r.model.name == model]
        heading = f"{scenario} · {model}"
        latency = _latency_figure(scenario, heading, [r for r in mine if r.mode == "performance"])
        more, why = _performance_figures(scenario, heading, mine)
        figures += ([latency] if latency is not None else []) + more
        notes += why
    for fig in figures:
        fig.update_layout(template="plotly_white")
    return figures, notes


def build_report(results: list[BenchResult]) -> str:
    by_scenario: dict[str, list[BenchResult]] = defaultdict(list)
    for r in results:
        by_scenario[r.scenario].append(r)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>kcloud bench report</title>",
        f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        "<h1>kcloud bench report</h1>",
        f"<p class='note'>{len(results)} run(s); generated {datetime.now(UTC).isoformat(timespec='seconds')} "
        f"by kcloud {html.escape(__version__)}. Validity is LoadGen's own verdict; figures marked MODELLED "
        "come from an emulated device's catalog model, not a sensor; null means no reading, "
        "with the reason.</p>",
    ]
    figure_count = 0
    order = [s for s in SCENARIOS if s in by_scenario] + sorted(set(by_scenario) - set(SCENARIOS))
    for scenario in order:
        runs = sorted(by_scenario[scenario], key=lambda r: (r.mode, r.system, r.device_label))
        parts.append(f"<h2>{html.escape(scenario)}</h2>")
        tables = _table(runs) + _twin_table(runs) + _token_table(runs)
        parts.append(f"<div class='scroll'>{tables}</div>")
        figures, notes = scenario_figures(scenario, runs)
        for fig in figures:
            figure_count += 1
            parts.append(
                "<div class='plot'>"
                + pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{figure_count}")
                + "</div>"
            )
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
        for r in runs:
            for note in r.notes:
                parts.append(f"<p class='note'>{html.escape(_label(r))}: {html.escape(note)}</p>")
    parts.append(
        f"<p class='note' id='figure-count' data-figures='{figure_count}'>{figure_count} plot(s).</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: list[Path], output: Path) -> tuple[Path, int]:
    """Write the report for every run found under `paths`; returns (path, number of runs)."""
    results = [load_result(p) for p in find_results(paths)]
    text = build_report(results)
    if output.exists() and output.is_dir():
        raise BenchError(f"{output} is a directory; give a file name for the report")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)
    return output, len(results)
