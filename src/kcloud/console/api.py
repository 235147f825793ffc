"""The console's own reads under `/api/v1/console`: what the pages need that the admin API lacks.

Everything a page changes (drain, deployments, keys) goes through the admin API itself, so its
role checks and its audit apply unchanged; these routes only read. Who sees what:

- devices and the farm's capacity: every key (the admin API's `/devices` shows them to all);
- deployments' live figures: the caller's own deployments (another tenant's answer 404);
- chat models' engine figures: the caller's own chat deployments;
- benchmark results and twin runs: farm-wide keys only (admins, farm-wide read-only keys). A
  result is the operator's record of a device, a deployment or a planned farm, not a tenant's
  object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from kcloud.console.bench_runs import BenchRuns
from kcloud.console.live import LiveFigures, device_state
from kcloud.console.twin_runs import TwinRuns
from kcloud.errors import ForbiddenError, NotFoundError
from kcloud.farm.capacity import capacity_report
from kcloud.farm.service import ControlPlaneService
from kcloud.farm.spec import DeploymentView
from kcloud.tenancy.roles import Principal

PREFIX = "/api/v1/console"


def console_api(
    service: ControlPlaneService,
    live: LiveFigures,
    bench: BenchRuns,
    twin: TwinRuns,
    caller: Callable[[], Principal | None],
) -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["console"])

    def deployments() -> list[DeploymentView]:
        """The deployments the caller may see (all of them without tenancy or for farm-wide keys)."""
        principal = caller()
        if principal is None or principal.farm_wide:
            return service.list_deployments()
        return service.list_deployments(principal.tenant_name, all_tenants=False)

    def generative(view: DeploymentView) -> bool:
        try:
            return service.repository.get(view.model, view.version).config.generative
        except (LookupError, ValueError):  # its model left the repository or broke: not servable now
            return False

    def farm_wide_only(what: str) -> None:
        principal = caller()
        if principal is not None and not principal.farm_wide:
            raise ForbiddenError(f"{what} are farm-wide records: "
                                 "an admin or a farm-wide read-only key reads them")

    @api.get("/overview", summary="Capacity by sector, cloud, vendor and chip; device, deployment and "
                                  "traffic counts now")
    async def overview() -> dict[str, Any]:
        mine = await anyio.to_thread.run_sync(deployments)
        devices = list(service.devices)
        states = {"healthy": 0, "draining": 0, "failed": 0}
        for view in await anyio.to_thread.run_sync(service.list_devices):
            states[device_state(view)] += 1
        statuses: dict[str, int] = {}
        for d in mine:
            statuses[d.status] = statuses.get(d.status, 0) + 1
        return {
            "capacity": capacity_report(devices).model_dump(mode="json"),
            "devices": {"total": len(devices), "emulated": sum(d.emulated for d in devices), **states},
            "deployments": {
                "total": len(mine),
                "by_status": statuses,
                "replicas_desired": sum(d.replicas for d in mine),
                "replicas_running": sum(d.running for d in mine),
            },
            "traffic": live.now([d.name for d in mine]),
        }

    @api.get("/devices", summary="Every device with its newest reading (one table, made once per tick)")
    async def devices(request: Request) -> Response:
        if "gzip" not in request.headers.get("accept-encoding", ""):
            return Response(live.devices_json, media_type="application/json")
        return Response(
            live.devices_gzip(),
            media_type="application/json",
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )

    @api.get("/devices/{uid:path}/history", summary="A device's recent readings and the replicas on it")
    async def device_history(uid: str) -> dict[str, Any]:
        history = live.history.get(uid)
        view = await anyio.to_thread.run_sync(service.device_view, uid)
        if history is None or view is None:
            raise NotFoundError(f"no device {uid!r}")
        replicas = [
            {"deployment": d.name, "id": r.id, "state": r.state}
            for d in await anyio.to_thread.run_sync(deployments)
            for r in d.replica_list
            if r.device == uid or uid in (r.stage_devices or [])
        ]
        # The placement state is read now, not from the last tick: a drain shows at once.
        return {
            **view.model_dump(include={"uid", "node", "name", "chip", "vendor", "emulated", "health_reason",
                                       "drain_reason"}),
            "state": device_state(view),
            "tick_s": live.tick_s,
            **history.as_json(),
            "replicas": replicas,
        }

    @api.get("/deployments/{name}/live", summary="A deployment's request rate, errors, latency and batch "
                                                 "size per tick")
    async def deployment_live(name: str) -> dict[str, Any]:
        names = {d.name for d in await anyio.to_thread.run_sync(deployments)}
        if name not in names:
            raise NotFoundError(f"deployment {name!r} not found")
        series = live.series.get(name)
        engine = live.engine_series.get(name)
        return {
            "deployment": name,
            "tick_s": live.tick_s,
            "latency_note": "p50 and p99 are estimated from the gateway's latency histogram buckets",
            **(series.as_json() if series is not None else {"t": []}),
            # A chat model's engine figures (TTFT, tokens/s, ...), as its engines measured them.
            "engine": engine.as_json() if engine is not None else None,
        }

    @api.get("/chat", summary="Chat models: each generative deployment with its engines' newest figures")
    async def chat() -> dict[str, Any]:
        rows = []
        for d in await anyio.to_thread.run_sync(deployments):
            if not generative(d):
                continue
            series = live.engine_series.get(d.name)
            rows.append({
                "deployment": d.name, "model": d.model, "version": d.version, "tenant": d.tenant,
                "status": d.status, "replicas": d.replicas, "running": d.running,
                "engine": live.engine_names.get(d.name),
                # null until its engines have been scraped twice (a rate needs two readings)
                "now": series.points[-1] if series is not None and series.points else None,
            })
        return {
            "tick_s": live.tick_s,
            "note": "Figures are the engines' own (vLLM, furiosa-llm), over each engine's last scrape "
                    "interval; percentiles are estimated from their histogram buckets",
            "deployments": rows,
        }

    @api.get("/bench", summary="Benchmark results, newest first")
    async def bench_list() -> list[dict[str, Any]]:
        farm_wide_only("benchmark results")
        return await anyio.to_thread.run_sync(bench.list)

    @api.get("/bench/compare", summary="Two benchmark runs side by side")
    async def bench_compare(a: str = Query(...), b: str = Query(...)) -> dict[str, Any]:
        farm_wide_only("benchmark results")
        return await anyio.to_thread.run_sync(bench.compare, a, b)

    @api.get("/bench/run/{run_id:path}", summary="One benchmark run: its figures and plots")
    async def bench_show(run_id: str) -> dict[str, Any]:
        farm_wide_only("benchmark results")
        return await anyio.to_thread.run_sync(bench.show, run_id)

    @api.get("/twin", summary="Digital-twin runs (`kcloud twin run`), newest first; every figure modelled")
    async def twin_list() -> list[dict[str, Any]]:
        farm_wide_only("twin runs")
        return await anyio.to_thread.run_sync(twin.list)

    @api.get("/twin/run/{run_id:path}", summary="One twin run: deployments, devices, events and plots")
    async def twin_show(run_id: str) -> dict[str, Any]:
        farm_wide_only("twin runs")
        return await anyio.to_thread.run_sync(twin.show, run_id)

    return api
