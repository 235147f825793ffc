"""The full stack served from a background thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from kcloud.app.options import ServeOptions
from kcloud.app.serve import serve_stack
from kcloud.app.stack import Stack, build_inventory, build_stack
from kcloud.devices.inventory import Inventory
from kcloud.models.repository import ModelRepository
from kcloud.serving.http_server import Server, bind_socket, run_on_uvloop, url_of

log = logging.getLogger(__name__)


class BackgroundGateway:
    """`kcloud up`'s stack on its own event loop in a thread.

    `start()` returns once the port accepts connections (a model that cannot start fails it);
    `stop()` shuts down as Ctrl-C would.
    """

    def __init__(self, options: ServeOptions, *, repository: ModelRepository,
                 inventory: Inventory | None = None, start_timeout_s: float = 120.0,
                 announce: Callable[[str], None] | None = None) -> None:
        self.options = options
        #: Hears what `kcloud up` would print at a first start (with tenancy: the admin key).
        self.announce = announce
        self.repository = repository
        self.inventory = inventory
        self.start_timeout_s = start_timeout_s
        self.stack: Stack | None = None
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        return url_of(self.options.host, self.port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    def start(self) -> BackgroundGateway:
        self._sock = bind_socket(self.options.host, self.options.port)
        self._port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="kcloud-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TimeoutError(f"the gateway did not start within {self.start_timeout_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the gateway failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            inventory = self.inventory or build_inventory(self.options.farm_files)
            self.stack = await build_stack(self.options, repository=self.repository, inventory=inventory,
                                           strict=True, announce=self.announce)
            assert self._sock is not None
            await serve_stack(self.stack, self._sock, on_listening=self._ready.set,
                              server_ready=lambda server: setattr(self, "_server", server),
                              options=self.options)

        try:
            run_on_uvloop(main)
        except BaseException as exc:
            self._error = exc
            log.debug("background gateway failed", exc_info=exc)
        finally:
            self._ready.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop as Ctrl-C would and wait for it; calling it again does nothing."""
        if self._server is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: already stopped
                self._loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the gateway did not stop within {timeout_s:.0f} s")
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> BackgroundGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
