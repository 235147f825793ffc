"""Tenancy against a real gateway process (uvicorn on loopback, real onnxruntime replicas), on SQLite
and on PostgreSQL: authentication, isolation, roles, usage, audit, bad input, the insecure mode."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from tenancy_support import SERVER_SECRET, WIDTH, GatewayProcess, infer_body

from kcloud.store.base import utcnow
from kcloud.tenancy.keys import generate_key
from kcloud.tenancy.schema import ApiKey

pytestmark = pytest.mark.slow


def _error(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


# -- authentication -----------------------------------------------------------------------------


def test_health_probes_need_no_key(gateway):
    with gateway.client() as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v2/models/alpha-model", None), ("POST", "/v2/models/alpha-model/infer", infer_body()),
     ("GET", "/v1/models", None), ("POST", "/v1/embeddings", {"model": "alpha-model", "input": "x"}),
     ("GET", "/api/v1/tenants", None), ("GET", "/metrics", None), ("GET", "/v2", None)],
)
def test_every_other_route_needs_a_key(gateway, method, path, body):
    with gateway.client() as client:
        response = client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "missing API key" in _error(response)


def test_garbled_unknown_revoked_and_expired_keys_get_401(gateway, keys, db):
    admin_key = keys["admin"]
    with gateway.client(admin_key) as admin:
        victim = admin.post("/api/v1/keys", json={"tenant": "alpha", "name": "to revoke"}).json()
        with gateway.client(victim["key"]) as client:
            assert client.get("/v1/models").status_code == 200
        assert admin.delete(f"/api/v1/keys/{victim['info']['prefix']}").status_code == 200
    # an expired key, written as the server writes keys (its HMAC secret is the test's)
    expired = generate_key(SERVER_SECRET.encode())
    with db.transaction() as session:
        session.add(ApiKey(prefix=expired.prefix, digest=expired.digest, role="readonly", created_by="test",
                           expires_at=utcnow() - timedelta(seconds=1)))
    right_prefix_wrong_secret = victim["key"][:-4] + "AAAA"
    cases = {
        "garbled": ("Bearer kc_nonsense", "malformed API key"),
        "wrong scheme": (f"Basic {keys['alpha']}", "unsupported authorization scheme"),
        "empty": ("Bearer", "empty bearer token"),
        "unknown": (f"Bearer {generate_key(b'x' * 32).text}", "invalid API key"),
        "wrong secret": (f"Bearer {right_prefix_wrong_secret}", "invalid API key"),
        "revoked": (f"Bearer {victim['key']}", "was revoked"),
        "expired": (f"Bearer {expired.text}", "expired at"),
    }
    for label, (header, message) in cases.items():
        for path in ("/v2/models/alpha-model", "/v1/models", "/api/v1/whoami"):
            response = httpx.get(gateway.url + path, headers={"Authorization": header})
            assert response.status_code == 401, (label, path, response.text)
            assert response.headers["www-authenticate"].startswith('Bearer realm="kcloud"'), label
            assert message in _error(response), (label, response.text)
    # the OpenAI routes answer in OpenAI's error shape, so the official client raises AuthenticationError
    response = httpx.get(gateway.url + "/v1/models", headers={"Authorization": "Bearer kc_bad"})
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_admin_key_is_announced_at_first_start_only(gateway, db_url, repo_path, tmp_path):
    assert gateway.admin_key.startswith("kc_")
    second = GatewayProcess(db_url, repo_path, tmp_path / "home2")
    try:
        assert not any("kc_" in line for line in second.announced)
        with second.client(gateway.admin_key) as client:  # the first key still works there
            assert client.get("/api/v1/whoami").json()["role"] == "admin"
    finally:
        second.stop()


# -- isolation ----------------------------------------------------------------------------------


def test_a_tenant_sees_and_calls_only_its_own_models(gateway, keys):
    with gateway.client(keys["alpha"]) as alpha:
        assert [m["id"] for m in alpha.get("/v1/models").json()["data"]] == ["alpha-model"]
        own = alpha.post("/v2/models/alpha-model/infer", json=infer_body(2))
        assert own.status_code == 200 and own.json()["outputs"][0]["shape"] == [2, WIDTH]
        assert alpha.get("/v2/models/alpha-model").status_code == 200
        nowhere = alpha.get("/v2/models/no-such-model")
        for other in ("beta-model", "ops-model"):  # another tenant's, and the operator's
            for method, path, body in (
                ("GET", f"/v2/models/{other}", None),
                ("GET", f"/v2/models/{other}/versions/1", None),
                ("GET", f"/v2/models/{other}/ready", None),
                ("POST", f"/v2/models/{other}/infer", infer_body()),
                ("POST", f"/v2/models/{other}/versions/1/infer", infer_body()),
                ("POST", "/v1/embeddings", {"model": other, "input": "hello"}),
            ):
                response = alpha.request(method, path, json=body)
                assert response.status_code == 404, (other, path, response.text)
                assert other not in _error(response).split(";", 1)[1], "the 404 must not list others' models"
            # indistinguishable from a model that does not exist
            assert _error(alpha.get(f"/v2/models/{other}")) == _error(nowhere).replace("no-such-model", other)
    with gateway.client(keys["beta"]) as beta:
        assert [m["id"] for m in beta.get("/v1/models").json()["data"]] == ["beta-model"]
        assert beta.post("/v2/models/alpha-model/infer", json=infer_body()).status_code == 404
    with gateway.client(keys["admin"]) as admin:
        assert {m["id"] for m in admin.get("/v1/models").json()["data"]} == {"alpha-model", "beta-model",
                                                                            "ops-model"}
        assert admin.post("/v2/models/beta-model/infer", json=infer_body()).status_code == 200


def test_metrics_which_name_every_tenants_models_are_for_farm_wide_keys_only(gateway, keys):
    with gateway.client(keys["alpha"]) as alpha:
        refused = alpha.get("/metrics")
    assert refused.status_code == 403 and "farm-wide" in _error(refused)
    with gateway.client(keys["admin"]) as admin:
        metrics = admin.get("/metrics")
    assert metrics.status_code == 200 and "kcloud_requests_total" in metrics.text


def test_read_only_keys_read_but_neither_change_nor_infer(gateway, keys):
    with gateway.client(keys["alpha-ro"]) as ro:
        assert ro.get("/v2/models/alpha-model").status_code == 200
        assert [m["id"] for m in ro.get("/v1/models").json()["data"]] == ["alpha-model"]
        refused = ro.post("/v2/models/alpha-model/infer", json=infer_body())
        assert refused.status_code == 403 and "read-only" in _error(refused)
        assert ro.post("/v1/embeddings", json={"model": "alpha-model", "input": "x"}).status_code == 403
        assert ro.post("/api/v1/keys", json={"tenant": "alpha"}).status_code == 403
        assert ro.get("/api/v1/keys").status_code == 200


def test_members_manage_only_their_own_tenants_keys(gateway, keys):
    with gateway.client(keys["alpha"]) as alpha, gateway.client(keys["beta"]) as beta:
        made = alpha.post("/api/v1/keys", json={"role": "readonly", "name": "dashboard"})
        assert made.status_code == 201 and made.json()["info"]["tenant"] == "alpha"
        prefix = made.json()["info"]["prefix"]
        assert alpha.post("/api/v1/keys", json={"tenant": "beta"}).status_code == 404
        assert alpha.post("/api/v1/keys", json={"role": "admin"}).status_code == 403
        assert alpha.post("/api/v1/tenants", json={"name": "gamma"}).status_code == 403
        assert alpha.get("/api/v1/keys", params={"tenant": "beta"}).status_code == 404
        assert {k["tenant"] for k in alpha.get("/api/v1/keys").json()} == {"alpha"}
        assert [t["name"] for t in alpha.get("/api/v1/tenants").json()] == ["alpha"]
        assert alpha.get("/api/v1/tenants/beta").status_code == 404
        assert beta.delete(f"/api/v1/keys/{prefix}").status_code == 404  # beta cannot touch alpha's key
        assert beta.get(f"/api/v1/keys/{prefix}").status_code == 404
        assert alpha.delete(f"/api/v1/keys/{prefix}").status_code == 200


# -- usage and audit ----------------------------------------------------------------------------


def test_usage_is_metered_per_tenant_key_deployment_and_day(gateway, keys):
    with gateway.client(keys["admin"]) as admin:
        fresh = admin.post("/api/v1/keys", json={"tenant": "beta", "name": "metered"}).json()["key"]
    with gateway.client(fresh) as beta:
        for rows in (1, 2, 3):
            assert beta.post("/v2/models/beta-model/infer", json=infer_body(rows)).status_code == 200
        assert beta.post("/v2/models/beta-model/infer", json={"inputs": []}).status_code == 400
        time.sleep(1.0)  # let the emulated NPU's modelled energy counter advance past idle
        usage = beta.get("/api/v1/usage", params={"deployment": "beta-model"}).json()
        assert beta.get("/api/v1/usage", params={"tenant": "alpha"}).status_code == 404
        assert beta.get("/api/v1/usage", params={"group_by": "day,colour"}).status_code == 400
    rows = [r for r in usage if r["key"] == fresh[3:15]]
    assert len(rows) == 1, usage
    row = rows[0]
    assert row["tenant"] == "beta" and row["day"] == utcnow().date().isoformat()
    assert row["requests"] == 4 and row["samples"] == 6 and row["errors"] == 1
    assert row["device_seconds"] > 0
    # beta's model runs on an emulated NPU: its energy is modelled and labelled so, never "measured"
    assert row["energy_joules"] is None
    assert row["energy_joules_modelled"] is not None and row["energy_joules_modelled"] > 0
    with gateway.client(keys["admin"]) as admin:
        by_tenant = admin.get("/api/v1/usage", params={"group_by": "tenant"}).json()
    assert {r["tenant"] for r in by_tenant} >= {"alpha", "beta"}
    assert all(r["day"] is None and r["key"] is None for r in by_tenant)


def test_admin_actions_are_audited_with_who_what_when(gateway, keys):
    with gateway.client(keys["admin"]) as admin:
        admin.post("/api/v1/tenants", json={"name": "audited"})
        admin.put("/api/v1/tenants/audited/quota", json={"max_replicas": 3})
        admin.delete("/api/v1/tenants/audited")
        entries = admin.get("/api/v1/audit", params={"limit": 20}).json()
    actor = "key:" + keys["admin"][3:15]
    actions = [(e["action"], e["target"], e["status"]) for e in entries if e["actor"] == actor]
    assert ("tenant.delete", "audited", 204) in actions
    assert ("quota.set", "audited", 200) in actions
    assert ("tenant.create", "audited", 201) in actions
    assert entries == sorted(entries, key=lambda e: (e["at"], e["id"]), reverse=True)
    assert any(e["action"] == "key.bootstrap" and e["actor"] == "system" for e in
               httpx.get(gateway.url + "/api/v1/audit", params={"action": "key.bootstrap"},
                         headers={"Authorization": f"Bearer {keys['admin']}"}).json())
    with gateway.client(keys["alpha"]) as alpha:  # refused attempts are audited too, and a tenant
        alpha.post("/api/v1/tenants", json={"name": "sneaky"})  # sees its own tenant's entries only
        own = alpha.get("/api/v1/audit").json()
    assert own and all(e["actor_tenant"] == "alpha" for e in own)
    assert any(e["action"] == "tenant.create" and e["status"] == 403 for e in own)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/v1/tenants", {"name": "Bad Name"}, 400, "tenant name"),
        ("POST", "/api/v1/tenants", {"name": "alpha"}, 409, "already exists"),
        ("POST", "/api/v1/tenants", {"name": "ok", "quota": {"max_devices": -1}}, 400, "max_devices"),
        ("POST", "/api/v1/tenants", {"name": "ok", "colour": "red"}, 400, "colour"),
        ("POST", "/api/v1/tenants", None, 400, ""),
        ("PUT", "/api/v1/tenants/alpha/quota", {"requests_per_second": 0}, 400, "requests_per_second"),
        ("PUT", "/api/v1/tenants/nobody/quota", {}, 404, "nobody"),
        ("POST", "/api/v1/keys", {"role": "member"}, 400, "needs a tenant"),
        ("POST", "/api/v1/keys", {"role": "admin", "tenant": "alpha"}, 400, "belongs to no tenant"),
        ("POST", "/api/v1/keys", {"role": "owner", "tenant": "alpha"}, 400, "role"),
        ("POST", "/api/v1/keys", {"tenant": "nobody"}, 404, "nobody"),
        ("POST", "/api/v1/keys", {"tenant": "alpha", "expires_at": "2001-01-01T00:00:00Z"}, 400, "past"),
        ("POST", "/api/v1/keys", {"tenant": "alpha", "expires_at": "2099-01-01T00:00:00"}, 400, "timezone"),
        ("DELETE", "/api/v1/keys/zzzzzzzzzzzz", None, 404, "no key"),
        ("DELETE", "/api/v1/tenants/alpha", None, 409, "deployment"),
        ("GET", "/api/v1/usage?since=2025-02-01&until=2025-01-01", None, 400, "after"),
        ("GET", "/api/v1/usage?since=yesterday", None, 400, "since"),
    ],
)
def test_bad_admin_input_is_refused_with_a_reason(gateway, keys, method, path, body, status, message):
    with gateway.client(keys["admin"]) as admin:
        if body is None and method == "POST":
            response = admin.request(method, path, content=b"{not json",
                                     headers={"content-type": "application/json"})
        else:
            response = admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert message in _error(response)


def test_revoking_twice_is_a_conflict(gateway, keys):
    with gateway.client(keys["admin"]) as admin:
        prefix = admin.post("/api/v1/keys", json={"tenant": "beta"}).json()["info"]["prefix"]
        assert admin.delete(f"/api/v1/keys/{prefix}").status_code == 200
        again = admin.delete(f"/api/v1/keys/{prefix}")
    assert again.status_code == 409 and "already revoked" in _error(again)


# -- the insecure mode --------------------------------------------------------------------------


def test_insecure_no_auth_is_announced_loudly_and_on_every_response(db_url, repo_path, tmp_path):
    process = GatewayProcess(db_url, repo_path, tmp_path / "home", insecure=True)
    try:
        assert any("AUTHENTICATION IS OFF" in line for line in process.announced)
        assert not any("kc_" in line for line in process.announced)  # no admin key in this mode
        with process.client() as anyone:
            responses = [
                anyone.get("/v2/health/live"),
                anyone.get("/v1/models"),
                anyone.post("/v2/models/alpha-model/infer", json=infer_body()),
                anyone.get("/v2/models/no-such-model"),
                anyone.get("/api/v1/whoami"),
            ]
        assert [r.status_code for r in responses] == [200, 200, 200, 404, 200]
        assert all(r.headers.get("x-kcloud-insecure") == "auth-disabled" for r in responses)
        assert responses[-1].json() == {"actor": "insecure-no-auth", "role": "admin", "tenant": None,
                                        "insecure": True}
    finally:
        process.stop()
    assert any("WARNING" in line and "AUTHENTICATION IS OFF" in line for line in process.output)
