"""Every state-changing `/api/` request is audited whatever its outcome, a 500 included (issue 13
item 4), on a real gateway served in this process (so a store function can be made to fail), on
SQLite and on PostgreSQL.

Before, the row was written only when the app started a response; a handler that raised left the
500 (sent by the error handler outside the tenancy middleware) with no audit row at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tenancy_support import SERVER_SECRET

from kcloud.app.background import BackgroundGateway
from kcloud.app.options import ServeOptions
from kcloud.models.repository import ModelRepository
from kcloud.tenancy import store
from kcloud.tenancy.roles import Role

pytestmark = pytest.mark.slow


@pytest.fixture
def served(db, db_url, repo_path, gateway, monkeypatch) -> Iterator[tuple[str, str]]:
    """(URL, admin key) of a gateway with tenancy, in this process, on the session's database.
    After the session's `gateway`, which must be the one to make (and announce) its first key."""
    monkeypatch.setenv("KCLOUD_KEY_SECRET", SERVER_SECRET)
    admin = store.create_key(db, SERVER_SECRET.encode(), role=Role.ADMIN, tenant=None, actor="test")
    options = ServeOptions(port=0, replicas=1, isolation="thread", models=["ops-model"], tenancy=True,
                           db_url=db_url)
    gateway = BackgroundGateway(options, repository=ModelRepository(repo_path)).start()
    try:
        yield gateway.url, admin.key
    finally:
        gateway.stop()


def test_a_request_that_fails_with_500_is_audited_once_with_its_status(served, monkeypatch):
    url, key = served

    def broken(*args, **kwargs):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(store, "create_tenant", broken)
    auth = {"Authorization": f"Bearer {key}"}
    answer = httpx.post(f"{url}/api/v1/tenants", json={"name": "boom-co"}, headers=auth, timeout=30)
    assert answer.status_code == 500, answer.text
    # read right after the 500: the row is written before the 500 leaves. On a new connection:
    # after an unhandled exception uvicorn closes the connection without a `Connection: close`.
    entries = httpx.get(f"{url}/api/v1/audit", params={"action": "tenant.create", "limit": 1000},
                        headers=auth, timeout=30).json()
    mine = [e for e in entries if e["target"] == "boom-co"]
    assert len(mine) == 1, mine
    assert mine[0]["status"] == 500 and mine[0]["method"] == "POST" and mine[0]["path"] == "/api/v1/tenants"
    assert mine[0]["actor"] == "key:" + key[3:15]
