"""Fixtures for tenancy tests: real databases (SQLite file, PostgreSQL schema), small real ONNX
models, and one real gateway process per database for the session (see `tenancy_support`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_models import add_model, build_double, build_slow
from tenancy_support import (
    MODELS,
    WIDTH,
    GatewayProcess,
    add_deployments,
    fresh_database,
)

from kcloud.models.repository import ModelRepository
from kcloud.store.db import Database, open_database

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def db_url(backend, tmp_path_factory) -> Iterator[str]:
    with fresh_database(backend, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="session")
def db(db_url) -> Iterator[Database]:
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture(scope="session")
def repo_path(tmp_path_factory) -> Path:
    """Each tenant's model does real work (8 × 64×64 MatMul+Tanh a row); the operator's doubles."""
    base = tmp_path_factory.mktemp("tenancy-models")
    repository = ModelRepository(base / "repo")
    slow = build_slow(base / "slow.onnx", width=WIDTH, layers=8)
    for name in ("alpha-model", "beta-model"):
        add_model(repository, name, slow, WIDTH, max_batch_size=8, max_queue_delay_ms=0.5)
    add_model(repository, "ops-model", build_double(base / "double.onnx", features=WIDTH), WIDTH,
              max_batch_size=8, max_queue_delay_ms=0.5)
    return repository.root


@pytest.fixture(scope="session")
def gateway(db, db_url, repo_path, tmp_path_factory) -> Iterator[GatewayProcess]:
    """One gateway per database for the whole session (starting one takes seconds); tests share
    its tenants (`tenants`) and add their own where they change things."""
    add_deployments(db, MODELS)
    process = GatewayProcess(db_url, repo_path, tmp_path_factory.mktemp("home"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def keys(gateway) -> dict[str, str]:
    """Tenants alpha and beta (owners of alpha-model and beta-model), a member key of each, a
    read-only key of alpha, and the admin key printed at the gateway's first start."""
    with gateway.client(gateway.admin_key) as admin:
        for name in ("alpha", "beta"):
            assert admin.post("/api/v1/tenants", json={"name": name}).status_code == 201
        made = {
            "alpha": admin.post("/api/v1/keys", json={"tenant": "alpha", "name": "alpha app"}).json()["key"],
            "beta": admin.post("/api/v1/keys", json={"tenant": "beta"}).json()["key"],
            "alpha-ro": admin.post("/api/v1/keys",
                                   json={"tenant": "alpha", "role": "readonly"}).json()["key"],
        }
    made["admin"] = gateway.admin_key
    return made
