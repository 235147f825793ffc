"""Fixtures for the control-plane tests: both databases, a small real model repository, a farm.

`db_url` runs each test twice: on a SQLite file, and on PostgreSQL (127.0.0.1:5432, database
`test`) in a schema of its own that is dropped afterwards, so tests running at the same time
never see each other's tables. When PostgreSQL cannot be reached, the PostgreSQL half is
skipped with a reason that says so plainly (CI has the server, so there it always runs).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from kcloud.devices.inventory import Inventory
from kcloud.devices.plugins.cpu import CpuPlugin
from kcloud.models.repository import ModelRepository
from kcloud.store.db import Database, open_database
from tiny_models import build_model

PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_NODE = "host"
#: A small mixed farm: FuriosaAI RNGD (best perf/watt for float models here), Rebellions ATOM,
#: a Sapeon X220 (no compute figures in the catalog), on two nodes.
FARM_TOML = """
[farm]
name = "control-plane-test"

[[nodes]]
name = "npu-a"
devices = [
  { chip = "furiosa-rngd", count = 2 },
  { chip = "rebellions-atom-ca22", count = 2 },
]

[[nodes]]
name = "npu-b"
devices = [
  { chip = "sapeon-x220-enterprise", id = "x220-0" },
  { chip = "rebellions-atom-ca22", id = "atom9" },
]
"""


def _postgres_problem() -> str | None:
    try:
        engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def fresh_database_url(kind: str, folder: Path) -> Iterator[str]:
    """A new, empty database of `kind`: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'kcloud.db'}"
        return
    problem = _postgres_problem()
    if problem is not None:
        pytest.skip(
            f"POSTGRESQL UNREACHABLE at 127.0.0.1:5432 ({problem}): the PostgreSQL run of this "
            f"control-plane test did NOT happen"
        )
    schema = f"cp_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_BASE)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test, on each engine in turn."""
    with fresh_database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database shared by one module's tests, on each engine in turn."""
    with fresh_database_url(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = open_database(db_url)
    yield db
    db.close()


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """`small` (100 MiB), `big` (20 GiB: fits only an RNGD's 48 GiB here), `cpu-only`."""
    repo = ModelRepository(tmp_path_factory.mktemp("cp-models") / "repo")
    build_model(repo, "small", memory_bytes=100 * 2**20, flops_per_sample=2.9e9)
    build_model(repo, "big", memory_bytes=20 * 2**30, flops_per_sample=1.4e10)
    build_model(repo, "cpu-only", memory_bytes=50 * 2**20, device_kinds=("cpu",))
    return repo


@pytest.fixture(scope="session")
def farm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cp-farm") / "farm.toml"
    path.write_text(FARM_TOML)
    return path


@pytest.fixture(scope="module")
def inventory(farm_file: Path) -> Iterator[Inventory]:
    """The test farm's emulated devices plus this machine's real CPU (as node `host`)."""
    inv = Inventory.build([farm_file], node=LOCAL_NODE, include_local=True, plugins=[CpuPlugin()])
    yield inv
    inv.close()


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling the server's state over HTTP; there is no event to wait on
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class ServedControlPlane:
    """The gateway with the control plane attached, served by uvicorn from a background thread.

    What `kcloud up` assembles, minus the CLI: a `Router`, the gateway app, `attach` (database,
    admin API, restore, reconciler), uvicorn on a free loopback port. `stop()` shuts down in
    `kcloud up`'s order: stop serving, stop reconciling, then stop the replicas.
    """

    def __init__(
        self,
        repository: ModelRepository,
        inventory: Inventory,
        db_url: str,
        *,
        interval_s: float = 0.5,
        health_interval_s: float = 3600.0,
        isolation: str = "process",
        autoscale_interval_s: float = 1.0,
    ) -> None:
        self.autoscale_interval_s = autoscale_interval_s
        self.repository = repository
        self.inventory = inventory
        self.db_url = db_url
        self.interval_s = interval_s
        self.health_interval_s = health_interval_s
        self.isolation = isolation
        self.control = None
        self.router = None
        self.error: BaseException | None = None
        self._server = None
        self._loop = None
        self._thread = None
        self._sock = None

    def start(self, timeout_s: float = 120.0) -> ServedControlPlane:
        import socket
        import threading

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        ready = threading.Event()
        self._ready = ready
        self._thread = threading.Thread(target=self._run, name="cp-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError("control-plane server did not start")
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _run(self) -> None:
        import asyncio

        import uvicorn
        from prometheus_client import CollectorRegistry

        from kcloud.farm.controlplane import attach
        from kcloud.serving.gateway import create_app
        from kcloud.serving.metrics import ServingMetrics
        from kcloud.serving.router import Router

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            router = self.router = Router(self.repository)
            metrics = ServingMetrics(CollectorRegistry())
            app = create_app(router, inventory=self.inventory, metrics=metrics)
            try:
                self.control = await attach(
                    app,
                    router,
                    self.inventory,
                    self.db_url,
                    repository=self.repository,
                    metrics=metrics,
                    isolation=self.isolation,
                    interval_s=self.interval_s,
                    health_interval_s=self.health_interval_s,
                    autoscale_interval_s=self.autoscale_interval_s,
                )
                config = uvicorn.Config(
                    app, loop="none", lifespan="off", log_level="warning", access_log=False
                )
                self._server = uvicorn.Server(config)
                serving = asyncio.create_task(self._server.serve(sockets=[self._sock]))
                while not self._server.started and not serving.done():
                    await asyncio.sleep(0.01)
                self._ready.set()
                await serving
            finally:
                if self.control is not None:
                    await self.control.close()
                await router.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._server is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> ServedControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
