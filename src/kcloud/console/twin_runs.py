"""Digital-twin runs for the console: the runs under a results root, and one run.

Runs are found and named as `run_tree.RunTree` says (`kcloud twin run` writes them under
`$KCLOUD_HOME/twin/<time>` by default). Every figure of a twin run is modelled, and the answers
say so. Figures are the twin report's own (`kcloud.twin.report.deployment_figure`,
`utilisation_figure`) as Plotly JSON, drawn by the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import plotly.io as pio

from kcloud.console.run_tree import RunTree, UnreadableRun, iso
from kcloud.errors import UnprocessableError
from kcloud.twin.report import deployment_figure, utilisation_figure
from kcloud.twin.results import RESULT_FILE, TwinResultError, load_twin_result

#: Devices listed on a run's page: those with replicas first, then the rest, up to this many (the
#: phase-1 farm has 57; a planned farm may have thousands, and the report file lists them all).
DEVICE_ROWS = 200


def _summary(run_id: str, result: dict[str, Any], written: float) -> dict[str, Any]:
    deployments = result["deployments"]
    energy = result["energy"]
    return {
        "id": run_id,
        "written_at": iso(written),
        "created": result["created"],
        "farm": result["farm"],
        "basis": result["basis"],
        "duration_s": result["duration_s"],
        "requests": result["simulation"].get("requests"),
        "deployments": len(deployments),
        "offered_rps": sum(d["offered_rps"] for d in deployments),
        "throughput_rps": sum(d["throughput_rps"] for d in deployments),
        "refused": sum(
            d["shed_429"] + d["timed_out_504"] + d["no_replica_503"] + d.get("over_client_cap_503", 0)
            + d["failed_502"]
            for d in deployments
        ),
        "energy_j": energy.get("energy_j"),
        "mean_power_w": energy.get("mean_power_w"),
        "warnings": len(result.get("warnings", [])),
        "modelled": True,
    }


class TwinRuns(RunTree[dict[str, Any]]):
    """`kcloud twin run` results under a root (`$KCLOUD_HOME/twin` by default)."""

    result_file = RESULT_FILE
    noun = "twin run"

    def load(self, path: Path) -> dict[str, Any]:
        try:
            return load_twin_result(path)
        except TwinResultError as exc:
            raise UnreadableRun(str(exc)) from None

    def summary(self, run_id: str, result: dict[str, Any], written: float) -> dict[str, Any]:
        try:
            return _summary(run_id, result, written)
        except (KeyError, TypeError, AttributeError) as exc:  # a figure the page reads is missing
            raise UnreadableRun(
                f"not a twin result of this kcloud version ({type(exc).__name__}: {exc})") from None

    def show(self, run_id: str) -> dict[str, Any]:
        """One run: its summary, deployments, devices, events, warnings and plots."""
        result, written = self.open(run_id)
        try:
            summary = self.summary(run_id, result, written)
        except UnreadableRun as exc:
            raise UnprocessableError(f"twin run {run_id!r}: {exc}") from None
        try:
            figures = [deployment_figure(result, d) for d in result["deployments"]]
            utilisation = utilisation_figure(result)
        except (KeyError, TypeError) as exc:
            raise UnprocessableError(f"twin run {run_id!r}: its timelines cannot be drawn "
                                     f"({type(exc).__name__}: {exc})") from None
        devices = sorted(result["devices"], key=lambda d: d.get("utilisation_timeline") is None)
        return {
            **summary,
            "gateway_ms": result.get("gateway_ms"),
            "seed": result.get("seed"),
            "simulation": result["simulation"],
            "deployments": [{k: v for k, v in d.items() if k != "timeline"} for d in result["deployments"]],
            "energy": result["energy"],
            "devices": [{k: v for k, v in d.items() if k != "utilisation_timeline"}
                        for d in devices[:DEVICE_ROWS]],
            "devices_total": len(devices),
            "events": result.get("events", []),
            "warning_list": result.get("warnings", []),
            "figures": [orjson.loads(pio.to_json(f, validate=False))
                        for f in [*figures, *([utilisation] if utilisation is not None else [])]],
        }
