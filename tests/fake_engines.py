"""A stand-in for LLM engines' `/metrics` pages: a loopback HTTP server whose answers a test sets.

It runs under uvicorn in its own thread, as a real engine is another process. The engine
metrics tests and the console's engine-figure tests share it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


class FakeEngines:
    """A loopback HTTP server whose answer per path a test sets: (status, text, delay)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, str, float]] = {}
        app = Starlette(routes=[Route("/{name}", self._page)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def _page(self, request: Request) -> Response:
        status, text, delay = self.pages.get(request.path_params["name"], (404, "not found", 0.0))
        if delay:
            await asyncio.sleep(delay)
        return PlainTextResponse(text, status_code=status)

    def set(self, name: str, text: str, *, status: int = 200, delay: float = 0.0) -> str:
        self.pages[name] = (status, text, delay)
        return self.url(name)

    def url(self, name: str) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/{name}"

    def __enter__(self) -> FakeEngines:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
