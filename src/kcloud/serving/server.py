"""Run the gateway on this machine: what `kcloud up` does, in small steps others can extend.

`serve()` is the whole job: bind the port (first, so a port in use fails before any model is
loaded), build the inventory, make sure the bundled models exist, start replicas on the local
CPU, then serve HTTP with uvicorn (uvloop + httptools) until Ctrl-C or SIGTERM. Shutdown is
graceful: uvicorn stops accepting and lets requests in flight finish, then every replica drains
its queue and its worker process ends.

Each step is its own function (`bind_socket`, `build_inventory`, `prepare_repository`,
`local_cpu`, `start_model_replicas`, `build_gateway`) so that the control plane can later restore
deployments from its database between them without rewriting this module. `BackgroundGateway`
runs the same stack in a thread for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
import uvloop
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kcloud.devices.device import Device
from kcloud.devices.inventory import Inventory
from kcloud.models.repository import ModelEntry, ModelRepository, default_repository_path
from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.serving.gateway import DEFAULT_MAX_BODY_BYTES, create_app
from kcloud.serving.http_protocol import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    ConnectionLimits,
    protocol_class,
)
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import Isolation, create_replica
from kcloud.serving.router import Router

if TYPE_CHECKING:
    from kcloud.farm.controlplane import ControlPlane
    from kcloud.tenancy import Tenancy

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: How long uvicorn lets requests in flight finish after Ctrl-C before closing connections.
GRACEFUL_SHUTDOWN_S = 10.0


class PortInUseError(OSError):
    """The address is taken (another `kcloud up`, or any other server)."""


class NoLocalCpuError(RuntimeError):
    """The inventory has no CPU device of this machine to place the bundled models on."""


@dataclass
class ServeOptions:
    """What `kcloud up` lets a user choose."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    farm_files: Sequence[Path] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Replicas per model; None = the measured-best layout for the device (`default_layout`).
    replicas: int | None = None
    isolation: Isolation = "process"
    #: Serve only these models (None = every model in the repository).
    models: Sequence[str] | None = None
    extra_routers: Sequence[APIRouter] = ()
    #: Attach the control plane (deployments, placement, failover: `kcloud.farm.controlplane`).
    control_plane: bool = False
    #: Its database (None: $KCLOUD_DB_URL, else SQLite in the kcloud home).
    db_url: str | None = None
    #: Attach tenancy (API keys on every route, isolation, quotas, usage, audit: `kcloud.tenancy`).
    tenancy: bool = False
    #: With tenancy: switch authentication off (`--insecure-no-auth`), announced loudly.
    insecure_no_auth: bool = False
    #: Connection limits (`kcloud.serving.http_protocol`): a request's headers must be complete
    #: this long after its first byte (else 408, or a silent close when nothing came) ...
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    #: ... its body may pause this long between two pieces (else 408) ...
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    #: ... an idle keep-alive connection is closed after this long ...
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    #: ... and one peer address may hold this many open connections (503 beyond; 0 = no cap).
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                                keep_alive_timeout_s=self.keep_alive_timeout_s,
                                max_per_client=self.max_connections_per_client)


@dataclass
class Stack:
    """Everything `serve` started, for the steps after it (printing, shutdown, control plane)."""

    router: Router
    app: FastAPI
    inventory: Inventory
    metrics: ServingMetrics
    device: Device
    repository: ModelRepository
    entries: list[ModelEntry] = field(default_factory=list)
    control_plane: ControlPlane | None = None
    tenancy: Tenancy | None = None


# ------------------------------------------------------------------------------- the steps
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); `PortInUseError` when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(exc.errno, f"port {port} on {host} is already in use; "
                                            f"stop what uses it or choose another with --port") from None
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_inventory(farm_files: Sequence[Path]) -> Inventory:
    """This machine's devices plus the emulated ones the farm files declare."""
    return Inventory.build(list(farm_files), include_local=True)


def prepare_repository(*, progress: bool = True, root: Path | None = None) -> ModelRepository:
    """The repository (default: under KCLOUD_HOME), with every bundled model built into it.

    The no-op model is bundled too: it is how a user (and the benchmark) sees what the gateway
    costs by itself.
    """
    from kcloud.models.builtin import builtin_names, ensure_builtin_models

    repository = ModelRepository(root or default_repository_path())
    ensure_builtin_models(repository, include=builtin_names(), progress=progress)
    return repository


def local_cpu(inventory: Inventory) -> Device:
    """The (first) real CPU of this machine: where the embedded default serves."""
    for device in inventory:
        if device.spec.kind == "cpu" and not device.emulated and device.healthy:
            return device
    raise NoLocalCpuError("no healthy CPU device found on this machine (see `kcloud devices list`)")


def replica_layout(device: Device, replicas: int | None) -> tuple[int, int]:
    """(replicas, threads each): the device's measured-best layout, or `replicas` sharing the cores."""
    cores = host_cores()
    best_count, best_threads = default_layout(device, cores)
    if replicas is None:
        return best_count, best_threads
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    threads = max(1, cores // replicas) if device.spec.kind == "cpu" and not device.emulated else best_threads
    return replicas, threads


async def start_model_replicas(
    router: Router,
    entries: Sequence[ModelEntry],
    device: Device,
    *,
    replicas: int | None,
    isolation: Isolation,
    metrics: ServingMetrics,
    inventory: Inventory | None = None,
    on_started: Callable[[ModelEntry, int], None] | None = None,
    on_failed: Callable[[ModelEntry, BaseException], None] | None = None,
) -> None:
    """Start `replicas` of each entry on `device` and route to them.

    Replicas of one model start concurrently (each spawns its own worker). A model that cannot
    start (unsupported device, broken graph) is reported to `on_failed` and skipped, so one bad
    model added by a user does not keep the others from serving; without `on_failed` it stops
    the whole start-up, after the replicas already started are stopped.
    """
    count, threads = replica_layout(device, replicas)
    emulation = inventory.emulated if inventory is not None and device.emulated else None
    try:
        for entry in entries:
            try:
                await _start_replicas_of(router, entry, device, count, threads, isolation, metrics, emulation)
            except Exception as exc:
                if on_failed is None:
                    raise RuntimeError(f"model {entry.name} v{entry.version} could not start: {exc}") from exc
                on_failed(entry, exc)
                continue
            if on_started is not None:
                on_started(entry, count)
    except BaseException:
        await router.close()
        raise


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Spawn worker processes with SIGINT ignored (an ignored signal stays ignored across exec).

    Ctrl-C in a terminal signals the whole foreground process group; the workers must not die
    of it mid-batch, because the server stops them itself after draining (graceful shutdown).
    The cost: a Ctrl-C pressed while replicas are starting is ignored for those seconds.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def _start_replicas_of(
    router: Router, entry: ModelEntry, device: Device, count: int, threads: int,
    isolation: Isolation, metrics: ServingMetrics, emulation: object,
) -> None:
    made = [
        create_replica(entry, device, isolation=isolation, threads=threads, metrics=metrics,
                       emulation=emulation)  # type: ignore[arg-type]
        for _ in range(count)
    ]
    with _workers_ignore_sigint():
        results = await asyncio.gather(*(r.start() for r in made), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is None:
        for replica in made:
            router.add_replica(replica)
        return
    for replica, result in zip(made, results, strict=True):
        if not isinstance(result, BaseException):
            await replica.stop()
    raise failure


def build_gateway(
    router: Router,
    inventory: Inventory,
    metrics: ServingMetrics,
    options: ServeOptions,
) -> FastAPI:
    return create_app(
        router,
        inventory=inventory,
        max_body_bytes=options.max_body_bytes,
        extra_routers=options.extra_routers,
        registry=metrics.registry,
        metrics=metrics,
    )


def served_entries(repository: ModelRepository, names: Sequence[str] | None) -> list[ModelEntry]:
    """The latest version of each model to serve (`names`, or every usable model)."""
    if names is None:
        return repository.list()
    return [repository.get(name) for name in names]


async def build_stack(
    options: ServeOptions,
    *,
    repository: ModelRepository,
    inventory: Inventory,
    on_replicas: Callable[[ModelEntry, int], None] | None = None,
    on_failed: Callable[[ModelEntry, BaseException], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Stack:
    """Replicas and app, ready to serve (must run on the loop that will serve)."""
    metrics = ServingMetrics(CollectorRegistry())
    device = local_cpu(inventory)
    entries = served_entries(repository, options.models)
    router = Router(repository)
    await start_model_replicas(router, entries, device, replicas=options.replicas,
                               isolation=options.isolation, metrics=metrics, inventory=inventory,
                               on_started=on_replicas, on_failed=on_failed)
    started = {r.entry.name for r in router.replicas()}
    entries = [e for e in entries if e.name in started]
    app = build_gateway(router, inventory, metrics, options)
    stack = Stack(router, app, inventory, metrics, device, repository, list(entries))
    if options.control_plane:  # restores the deployments from its database before serving
        from kcloud.farm.controlplane import attach

        stack.control_plane = await attach(app, router, inventory, options.db_url, repository=repository,
                                           metrics=metrics, isolation=options.isolation)
    if options.tenancy:  # keys on every route; prints the admin key at a database's first start
        from kcloud.tenancy import attach as attach_tenancy

        db = stack.control_plane.db if stack.control_plane is not None else options.db_url
        stack.tenancy = attach_tenancy(app, db, inventory=inventory, insecure=options.insecure_no_auth,
                                       announce=announce)
    return stack


# ------------------------------------------------------------------------------ serving HTTP
class _Server(uvicorn.Server):
    """uvicorn's server with a start-up event, and signals that stop it without re-raising.

    uvicorn re-raises a captured SIGINT after shutdown (so the program dies with
    KeyboardInterrupt); we finish our own clean-up (draining replicas) instead.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.started_event.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(app: FastAPI, limits: ConnectionLimits | None = None) -> uvicorn.Config:
    limits = limits or ConnectionLimits()
    return uvicorn.Config(
        app,
        loop="none",  # the caller's loop (uvloop) already runs
        http=protocol_class(limits),  # httptools, with header/body timeouts and a per-client cap
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        proxy_headers=False,  # loopback by default; nothing in front of us to trust
    )


async def serve_stack(
    stack: Stack,
    sock: socket.socket,
    *,
    on_listening: Callable[[], None] | None = None,
    server_ready: Callable[[_Server], None] | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve `stack.app` on `sock` until stopped, then drain the replicas."""
    server = _Server(uvicorn_config(stack.app, limits))
    if server_ready is not None:
        server_ready(server)

    async def announce() -> None:
        await server.started_event.wait()
        if on_listening is not None:
            on_listening()

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        if stack.tenancy is not None:  # writes the usage still in memory, while the database is open
            await asyncio.to_thread(stack.tenancy.close)
        if stack.control_plane is not None:  # stop reconciling before the replicas stop
            await stack.control_plane.close()
        await stack.router.close()
        stack.inventory.close()


#: Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Make the garbage collector cheap for a long-running server: call once start-up is done.

    Start-up leaves hundreds of thousands of long-lived objects (routes, schemas, the ORM,
    tokenizers); `gc.freeze()` moves them out of the collector's sight, so later collections do
    not walk them again and again. A higher young-generation threshold means fewer collections
    for the short-lived objects every request makes. Measured under the serving benchmark's
    MiniLM load on 2 cores: about a fifth less CPU in the gateway process per request.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_on_uvloop(main: Callable[[], object]) -> object:
    """Run a coroutine function on a fresh uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


# ---------------------------------------------------------------------------- `kcloud up`
def curl_example(url: str, entries: Sequence[ModelEntry]) -> str | None:
    """A ready-to-paste request for the first text model (or any model with a BYTES input)."""
    for entry in entries:
        spec = entry.config.inputs[0]
        if len(entry.config.inputs) == 1 and spec.datatype == "BYTES":
            body = (f'{{"inputs":[{{"name":"{spec.name}","datatype":"BYTES","shape":[1],'
                    f'"data":["Hello from K-Cloud"]}}]}}')
            return (f"curl -s {url}/v2/models/{entry.name}/infer "
                    f"-H 'Content-Type: application/json' -d '{body}'")
    return None


def print_banner(console: Console, url: str, stack: Stack, replicas: dict[str, int]) -> None:
    console.print(f"[bold green]kcloud is serving[/bold green] on {url}")
    console.print(f"  Open Inference Protocol v2  {url}/v2")
    console.print(f"  OpenAI-compatible           {url}/v1")
    console.print(f"  Prometheus metrics          {url}/metrics")
    console.print(f"  API docs                    {url}/docs")
    if stack.control_plane is not None:
        console.print(f"  Admin API (deployments)     {url}/api/v1   (kcloud deploy --help)")
    if stack.tenancy is not None and not stack.tenancy.insecure:
        console.print("  API keys                    every route: Authorization: Bearer <key> (kcloud keys)")
    console.print(f"Models on {stack.device.uid} ({stack.device.name}):")
    for entry in stack.entries:
        count = replicas.get(entry.name, 0)
        console.print(f"  {entry.name} v{entry.version}  {count} replica{'s' if count != 1 else ''}")
    example = curl_example(url, stack.entries)
    if example and stack.tenancy is not None and not stack.tenancy.insecure:  # every route needs a key
        example = example.replace("curl -s ", 'curl -s -H "Authorization: Bearer $KCLOUD_API_KEY" ', 1)
    if example:
        text_model = example.split("/v2/models/")[1].split("/")[0]
        port_flag = "" if url == url_of(DEFAULT_HOST, DEFAULT_PORT) else f" --url {url}"
        console.print("Try:")
        console.print(f"  {example}", soft_wrap=True, markup=False, highlight=False)
        console.print(f'  kcloud infer {text_model} --text "Hello from K-Cloud"{port_flag}',
                      soft_wrap=True, markup=False, highlight=False)
    console.print("Press Ctrl-C to stop.")


def serve(options: ServeOptions, *, console: Console | None = None) -> None:
    """`kcloud up`: the embedded default, in the foreground until Ctrl-C or SIGTERM.

    Raises `PortInUseError` before loading anything when the port is taken.
    """
    console = console or Console()
    sock = bind_socket(options.host, options.port)
    try:
        url = url_of(options.host, sock.getsockname()[1])
        if options.control_plane:  # a database that cannot be used fails before anything starts
            from kcloud.store.db import open_database

            open_database(options.db_url).close()
        if options.tenancy:  # so does an unusable API-key secret
            from kcloud.home import kcloud_home
            from kcloud.tenancy.keys import load_server_secret

            load_server_secret(kcloud_home())
            from kcloud.tenancy.service import check_usage_settings

            check_usage_settings()
        inventory = build_inventory(options.farm_files)
        repository = prepare_repository(progress=True)
        started: dict[str, int] = {}

        async def main() -> None:
            entries = served_entries(repository, options.models)
            with _progress(console) as progress:
                task = progress.add_task("Starting replicas", total=len(entries))

                def on_replicas(entry: ModelEntry, count: int) -> None:
                    started[entry.name] = count
                    progress.update(task, advance=1, description=f"Started {entry.name}")

                def on_failed(entry: ModelEntry, exc: BaseException) -> None:
                    progress.console.print(f"[yellow]warning:[/yellow] model {entry.name} v{entry.version} "
                                           f"is not served: {escape(str(exc))}")
                    progress.update(task, advance=1)

                from kcloud.tenancy import console_announcer

                stack = await build_stack(options, repository=repository, inventory=inventory,
                                          on_replicas=on_replicas, on_failed=on_failed,
                                          announce=console_announcer(progress.console))
            tune_gc_for_serving()  # this process is the server from here on
            await serve_stack(stack, sock, on_listening=lambda: print_banner(console, url, stack, started),
                              limits=options.connection_limits())
            console.print("kcloud stopped.")

        run_on_uvloop(main)
    finally:
        sock.close()


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


# ------------------------------------------------------------------------- background server
class BackgroundGateway:
    """The full stack served from a background thread (tests, benchmarks).

    `start()` returns once the port accepts connections; `stop()` shuts down as Ctrl-C would.
    """

    def __init__(self, options: ServeOptions, *, repository: ModelRepository,
                 inventory: Inventory | None = None, start_timeout_s: float = 120.0) -> None:
        self.options = options
        self.repository = repository
        self.inventory = inventory
        self.start_timeout_s = start_timeout_s
        self.stack: Stack | None = None
        self._server: _Server | None = None
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
            self.stack = await build_stack(self.options, repository=self.repository, inventory=inventory)
            assert self._sock is not None
            await serve_stack(self.stack, self._sock, on_listening=self._ready.set,
                              server_ready=lambda server: setattr(self, "_server", server),
                              limits=self.options.connection_limits())

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
