"""One self-contained HTML page over a twin run, in the bench report's style.

The page holds plotly.js itself (it opens offline) and says at the top that every figure on it
is modelled: per deployment a table of throughput, latency percentiles and refused requests,
and a timeline of answers per second and p99; per device its utilisation and energy, with the
basis of its power figures. Placement decisions, failovers and warnings close the page.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2733; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
th { background: #f3f5f8; } td.l, th.l { text-align: left; }
.modelled { color: #7a4fbf; font-weight: 600; } .note { color: #555; font-size: 0.85em; }
.plot { margin: 8px 0 24px; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _plot(figure: go.Figure) -> str:
    figure.update_layout(height=320, margin={"l": 60, "r": 60, "t": 40, "b": 40}, template="plotly_white")
    return '<div class="plot">' + pio.to_html(figure, include_plotlyjs=False, full_html=False) + "</div>"


def deployment_figure(result: dict[str, Any], deployment: dict[str, Any]) -> go.Figure:
    """A deployment's answers per second and p99 over simulated time (the console draws it too)."""
    t = result["timeline_s"]
    timeline = deployment["timeline"]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(x=t, y=timeline["answered_per_s"], name="answered/s", line={"color": "#1f6feb"})
    )
    figure.add_trace(
        go.Scatter(
            x=t, y=timeline["p99_ms"], name="p99 ms", yaxis="y2", line={"color": "#d1242f"}, connectgaps=False
        )
    )
    figure.update_layout(
        title=f"{deployment['name']}: answers per second and p99 latency (modelled)",
        xaxis={"title": "simulated time (s)"},
        yaxis={"title": "answered/s"},
        yaxis2={"title": "p99 (ms)", "overlaying": "y", "side": "right"},
    )
    return figure


def utilisation_figure(result: dict[str, Any]) -> go.Figure | None:
    """Utilisation over simulated time of the devices with replicas (the first 40); None if none."""
    used = [d for d in result["devices"] if d["utilisation_timeline"] is not None]
    if not used:
        return None
    figure = go.Figure()
    for device in used[:40]:  # a readable chart; the table lists every device
        figure.add_trace(
            go.Scatter(x=result["timeline_s"], y=device["utilisation_timeline"], name=device["uid"])
        )
    figure.update_layout(
        title="Utilisation of the devices with replicas (modelled)",
        xaxis={"title": "simulated time (s)"},
        yaxis={"title": "utilisation", "range": [0, 1.05]},
    )
    return figure


def render(result: dict[str, Any]) -> str:
    """The report page for one `kcloud twin run` result."""
    sim = result["simulation"]
    pauses = result.get("pauses")
    stalls = (
        f"; stalls of {_fmt(pauses['mean_ms'])} ms every {_fmt(pauses['every_s'])} s on average"
        if pauses
        else ""
    )
    parts = [
        f"<h1>kcloud twin: {html.escape(result['farm'])}</h1>",
        '<p><span class="modelled">MODELLED</span> — every figure on this page comes from the twin, '
        f"not from a measurement: {html.escape(result['basis'])}.</p>",
        f'<p class="note">{_fmt(result["duration_s"])} s simulated (seed {result["seed"]}; gateway '
        f"{_fmt(result['gateway_ms'])} ms of CPU per request, serial; fixed delay "
        f"{_fmt(result['overhead_ms'])} ms per request{stalls}), {sim['requests']:,} requests in "
        f"{sim['wall_s']} s of wall time ({_fmt(sim['speed_x_real_time'])}× real time"
        f"{'' if sim['compiled'] else ', interpreted: numba missing'}); "
        f"kcloud {html.escape(result['kcloud_version'])}, {html.escape(result['created'])}.</p>",
        "<h2>Deployments</h2>",
    ]
    rows = []
    for d in result["deployments"]:
        lat = d["latency_ms"]
        rows.append(
            [
                d["name"],
                d["model"],
                len(d["replicas"]),
                d["offered_rps"],
                d["throughput_rps"],
                lat["p50"],
                lat["p99"],
                lat["p99.9"],
                d["shed_429"],
                d["timed_out_504"],
                d["no_replica_503"] + d.get("over_client_cap_503", 0),
                d["failed_502"],
            ]
        )
    parts.append(
        _table(
            [
                "deployment",
                "model",
                "replicas",
                "offered req/s",
                "answered req/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "429",
                "504",
                "503",
                "502",
            ],
            rows,
            left=2,
        )
    )
    for d in result["deployments"]:
        parts.append(f"<h3>{html.escape(d['name'])}</h3>")
        parts.append(f'<p class="note">{html.escape(d["placement"])}</p>')
        parts.append(_plot(deployment_figure(result, d)))
        parts.append(
            _table(
                [
                    "device",
                    "chip",
                    "profile",
                    "from s",
                    "until s",
                    "batch rows",
                    "batch-1 ms",
                    "mean batch",
                    "utilisation",
                ],
                [
                    [
                        r["device"],
                        r["chip"],
                        r["profile"],
                        r["serves_from_s"],
                        r["serves_until_s"],
                        r["batch_rows"],
                        r["service_ms_batch_1"],
                        r["mean_batch_rows"],
                        r["utilisation"],
                    ]
                    for r in d["replicas"]
                ],
                left=3,
            )
        )
    energy = result["energy"]
    parts.append("<h2>Devices and energy</h2>")
    parts.append(
        f"<p>Farm energy {_fmt(energy['energy_j'])} J, mean power {_fmt(energy['mean_power_w'])} W, "
        f"{_fmt(energy['joules_per_answered_request'])} J per answered request "
        f'<span class="modelled">modelled</span>. {html.escape(energy["note"] or "")}</p>'
    )
    if (utilisation := utilisation_figure(result)) is not None:
        parts.append(_plot(utilisation))
    parts.append(
        _table(
            ["device", "chip", "emulated", "utilisation", "mean W", "energy J", "power"],
            [
                [
                    d["uid"],
                    d["chip"],
                    d["emulated"],
                    d["utilisation"],
                    d["mean_power_w"],
                    d["energy_j"],
                    d["power_basis"],
                ]
                for d in result["devices"]
            ],
            left=2,
        )
    )
    parts.append("<h2>Placement and events</h2><ul>")
    parts.extend(f"<li>{html.escape(e)}</li>" for e in result["events"])
    parts.append("</ul>")
    if result["warnings"]:
        parts.append("<h2>Warnings</h2><ul>")
        parts.extend(f"<li>{html.escape(w)}</li>" for w in result["warnings"])
        parts.append("</ul>")
    figures = sum(part.startswith('<div class="plot">') for part in parts)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>kcloud twin</title>'
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body data-figures='{figures}'>"
        + "".join(parts)
        + "</body></html>"
    )
