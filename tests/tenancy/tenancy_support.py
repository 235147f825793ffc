"""Helpers shared by the tenancy tests: real databases (a SQLite file, or a PostgreSQL schema of
its own), small real ONNX models, and a real gateway process with tenancy attached.

(A module with its own name rather than `conftest`, so that `from tenancy_support import ...`
cannot pick up another package's conftest.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from kcloud.farm.schema import Deployment, ModelRow
from kcloud.store.db import Database

PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SERVER_SECRET = "tenancy-tests-server-secret-0123456789abcdef"
HERE = Path(__file__).resolve().parent
#: The models every test gateway serves, and who owns them (None: no deployment row, the operator's).
MODELS = {"alpha-model": "alpha", "beta-model": "beta", "ops-model": None}
WIDTH = 64
#: beta's model runs on an emulated NPU, whose (modelled) energy counter usage attributes.
EMULATED_MODEL = "beta-model"
FARM = """
[farm]
name = "tenancy-test"

[[nodes]]
name = "emu"
devices = [{ chip = "rebellions-atom-ca22", id = "atom0" }]
"""


def _postgres_reachable() -> bool:
    try:
        engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@contextmanager
def fresh_database(kind: str, tmp_path_factory) -> Iterator[str]:
    """A new empty database: a SQLite file, or its own schema in the test PostgreSQL (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'kcloud.db'}"
        return
    if not _postgres_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = f"tenancy_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_BASE)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def add_deployments(db: Database, owners: dict[str, str | None]) -> None:
    """Deployment rows as the control plane writes them: served name -> owning tenant."""
    with db.transaction() as session:
        for name, tenant in owners.items():
            if tenant is None:
                continue
            if session.scalar(sa.select(Deployment.id).where(Deployment.name == name)) is not None:
                continue
            model = ModelRow(name=name, version=1, platform="onnxruntime", device_kinds=["cpu"])
            session.add(model)
            session.flush()
            session.add(Deployment(name=name, tenant=tenant, model_id=model.id, replicas=1))


class GatewayProcess:
    """`gateway_proc.py` in a subprocess: started, read until it listens, stopped with SIGTERM."""

    def __init__(self, db_url: str, repo: Path, home: Path, *, insecure: bool = False,
                 control_plane: bool = False, bundled: tuple[str, ...] = (), farm: str = FARM) -> None:
        env = {**os.environ, "KCLOUD_HOME": str(home), "KCLOUD_KEY_SECRET": SERVER_SECRET,
               "OMP_NUM_THREADS": "1"}
        home.mkdir(parents=True, exist_ok=True)
        farm_file = home / "farm.toml"
        farm_file.write_text(farm)
        command = [sys.executable, str(HERE / "gateway_proc.py"), "--db", db_url, "--repo", str(repo),
                   "--interval", "0.5", "--farm", str(farm_file)]
        if control_plane:  # the control plane decides what is served, besides `bundled` (as `kcloud up`)
            command += ["--models", ",".join(bundled), "--control-plane"]
        else:
            command += ["--models", ",".join(MODELS), "--emulated", EMULATED_MODEL]
        if insecure:
            command.append("--insecure")
        self.announced: list[str] = []
        self.output: list[str] = []
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.port = self._wait_listening(timeout_s=90)
        self.url = f"http://127.0.0.1:{self.port}"
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_listening(self, timeout_s: float) -> int:
        timer = threading.Timer(timeout_s, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.output.append(line)
                if line.startswith("ANNOUNCE "):
                    self.announced.append(line[len("ANNOUNCE "):])
                elif line.startswith("LISTENING "):
                    return int(line.split()[1])
        finally:
            timer.cancel()
        raise RuntimeError("test gateway did not start:\n" + "\n".join(self.output[-40:]))

    def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    @property
    def admin_key(self) -> str:
        keys = [line.strip() for line in self.announced if line.strip().startswith("kc_")]
        assert len(keys) == 1, self.announced
        return keys[0]

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def infer_body(rows: int = 1, value: float = 1.0) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, WIDTH],
                        "data": [value] * (rows * WIDTH)}]}
