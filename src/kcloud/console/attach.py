"""Putting the console on the gateway's app: its static pages at `/ui`, its reads under
`/api/v1/console`, and the live sampler they poll."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import plotly
from fastapi import FastAPI
from starlette.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kcloud.console.api import console_api
from kcloud.console.bench_runs import BenchRuns
from kcloud.console.live import DEFAULT_TICK_S, LiveFigures
from kcloud.console.twin_runs import TwinRuns
from kcloud.farm.controlplane import ControlPlane
from kcloud.serving.engine_metrics import EngineMetrics
from kcloud.serving.metrics import ServingMetrics
from kcloud.tenancy.roles import Principal

PATH = "/ui"
STATIC = Path(str(files("kcloud.console") / "static"))
#: plotly.js as the plotly package ships it (the bench report inlines the same file).
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
#: Scripts only from the gateway itself (never inline, never another site), so a name with markup
#: that slipped past the page's text rendering still runs nothing. Plotly sets inline styles.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _Secured:
    """Adds `SECURITY_HEADERS` to every answer of the wrapped static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, secured)


@dataclass
class Console:
    live: LiveFigures

    async def close(self) -> None:
        await self.live.stop()


def attach(
    app: FastAPI,
    control_plane: ControlPlane,
    metrics: ServingMetrics | None,
    *,
    engines: EngineMetrics | None = None,
    bench_root: Path,
    twin_root: Path,
    caller: Callable[[], Principal | None],
    tick_s: float = DEFAULT_TICK_S,
) -> Console:
    """Serve the console on `app` and start sampling (on the running loop)."""
    service = control_plane.service
    sample = control_plane.reconciler.sample
    assert sample is not None, "the control plane reads telemetry (attach gives its reconciler a sampler)"
    live = LiveFigures(
        devices=lambda: list(service.devices),
        sample=sample,
        device_views=service.list_devices,
        metrics=metrics,
        engines=engines,
        tick_s=tick_s,
    )
    app.include_router(console_api(service, live, BenchRuns(bench_root), TwinRuns(twin_root), caller))

    @app.get(PATH, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/")

    @app.get(f"{PATH}/assets/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript",
                            headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS})

    app.mount(PATH, _Secured(StaticFiles(directory=STATIC, html=True)), name="console")
    live.start()
    return Console(live)
