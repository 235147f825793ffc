"""Quotas enforced where deployments are created and scaled: the control plane's admin API on a
real gateway (the control plane attached as `kcloud up` attaches it), on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from tenancy_support import GatewayProcess, fresh_database, infer_body

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cp(backend, repo_path, tmp_path_factory):
    """A gateway with the control plane, its own database, and tenants quota-a / quota-b."""
    with fresh_database(backend, tmp_path_factory) as url:
        process = GatewayProcess(url, repo_path, tmp_path_factory.mktemp("cp-home"), control_plane=True,
                                 bundled=("ops-model",))
        try:
            with process.client(process.admin_key) as admin:
                for name in ("quota-a", "quota-b"):
                    assert admin.post("/api/v1/tenants", json={"name": name}).status_code == 201
                keys = {name: admin.post("/api/v1/keys", json={"tenant": name}).json()["key"]
                        for name in ("quota-a", "quota-b")}
            keys["admin"] = process.admin_key
            yield process, keys
        finally:
            process.stop()


ATOM = {"chip": "rebellions-atom-ca22"}  # the emulated NPU of the test farm (node emu)
CPU = {"vendor": "cpu"}  # this machine's CPU


def _deploy(client, name: str, replicas: int, constraints: dict, model: str = "alpha-model", **extra):
    body = {"model": model, "name": name, "replicas": replicas, "constraints": constraints, **extra}
    return client.post("/api/v1/deployments", json=body)


def _error(response) -> str:
    return response.json()["error"]


def _set_quota(cp, tenant: str, **quota) -> None:
    process, keys = cp
    with process.client(keys["admin"]) as admin:
        assert admin.put(f"/api/v1/tenants/{tenant}/quota", json=quota).status_code == 200


def test_replica_quota_refuses_create_and_scale_and_writes_nothing(cp):
    process, keys = cp
    _set_quota(cp, "quota-a", max_replicas=2)
    with process.client(keys["quota-a"]) as a:
        made = _deploy(a, "a-one", 1, ATOM)
        assert made.status_code == 201 and made.json()["tenant"] == "quota-a"
        scaled = a.post("/api/v1/deployments/a-one/scale", json={"replicas": 3})
        assert scaled.status_code == 403
        reason = _error(scaled)
        assert "quota exceeded" in reason and "3 replicas" in reason and "allows 2" in reason
        assert a.get("/api/v1/deployments/a-one").json()["replicas"] == 1  # the refused scale left nothing
        second = _deploy(a, "a-two", 2, ATOM)
        assert second.status_code == 403 and "3 replicas" in _error(second)
        assert a.get("/api/v1/deployments/a-two").status_code == 404  # the refused create left nothing
        assert a.post("/api/v1/deployments/a-one/scale", json={"replicas": 2}).status_code == 200
    with process.client(keys["admin"]) as admin:  # the tenant's quota binds an admin acting for it too
        assert _deploy(admin, "a-three", 1, ATOM, tenant="quota-a").status_code == 403


def test_device_vendor_and_pf_quotas(cp):
    process, keys = cp
    _set_quota(cp, "quota-b", max_devices=1)
    with process.client(keys["quota-b"]) as b:
        assert _deploy(b, "b-cpu", 1, CPU, model="beta-model").status_code == 201
        second = _deploy(b, "b-npu", 1, ATOM, model="beta-model")
        assert second.status_code == 403 and "2 devices" in _error(second) and "allows 1" in _error(second)
        _set_quota(cp, "quota-b", max_devices_per_vendor={"rebellions": 0})
        vendor = _deploy(b, "b-npu", 1, ATOM, model="beta-model")
        assert vendor.status_code == 403 and "1 rebellions devices" in _error(vendor)
        # a PF cap cannot count a device whose catalog figure is unknown (the generic CPU): refused, not 0
        _set_quota(cp, "quota-b", max_pf=10)
        unknown = b.post("/api/v1/deployments/b-cpu/scale", json={"replicas": 2})
        assert unknown.status_code == 403 and "no FP16/BF16 PFLOPS figure" in _error(unknown)
        _set_quota(cp, "quota-b")
    _set_quota(cp, "quota-a", max_pf=0.1, pf_figure="int8_pops")  # one ATOM is 0.128 INT8 POPS
    with process.client(keys["quota-a"]) as a:
        pf = a.post("/api/v1/deployments/a-one/scale", json={"replicas": 1})
        assert pf.status_code == 403
        assert "0.128 INT8 POPS" in _error(pf) and "allows 0.1 INT8 POPS" in _error(pf)
    _set_quota(cp, "quota-a")


def test_deployments_of_an_unknown_tenant_are_refused(cp):
    process, keys = cp
    with process.client(keys["admin"]) as admin:
        refused = _deploy(admin, "ghostly", 1, ATOM, tenant="ghost")
    assert refused.status_code == 404 and "tenant 'ghost' not found" in _error(refused)


def test_control_plane_deployments_are_isolated_and_served_to_their_owner(cp):
    process, keys = cp
    with process.client(keys["quota-a"]) as a, process.client(keys["quota-b"]) as b:
        made = _deploy(a, "a-served", 1, CPU)
        assert made.status_code == 201 and made.json()["name"] == "quota-a:a-served"
        for name in ("a-served", "quota-a:a-served"):
            assert b.get(f"/api/v1/deployments/{name}").status_code == 404
            assert b.post(f"/api/v1/deployments/{name}/scale", json={"replicas": 0}).status_code == 404
        assert "quota-a:a-served" not in {d["name"] for d in b.get("/api/v1/deployments").json()}
        events = a.get("/api/v1/events", params={"deployment": "a-served"})  # a bare name, resolved
        assert events.status_code == 200 and {e["deployment"] for e in events.json()} == {"quota-a:a-served"}
        assert b.get("/api/v1/events", params={"deployment": "quota-a:a-served"}).status_code == 404
        assert {d["tenant"] for d in a.get("/api/v1/deployments").json()} == {"quota-a"}
        deadline = time.monotonic() + 60
        while a.get("/api/v1/deployments/a-served").json()["running"] < 1:
            assert time.monotonic() < deadline, "the deployment did not start within 60 s"
            time.sleep(0.1)
        # the gateway learns owners from the deployments table within its refresh interval (0.5 s)
        while a.post("/v2/models/a-served/infer", json=infer_body()).status_code != 200:
            assert time.monotonic() < deadline, "the deployment was not served to its owner"
            time.sleep(0.1)
        assert a.post("/v2/models/quota-a:a-served/infer", json=infer_body()).status_code == 200
        for name in ("a-served", "quota-a:a-served"):
            assert b.post(f"/v2/models/{name}/infer", json=infer_body()).status_code == 404
        assert "quota-a:a-served" not in {m["id"] for m in b.get("/v1/models").json()["data"]}
        assert "quota-a:a-served" in {m["id"] for m in a.get("/v1/models").json()["data"]}



def _served_by(client, name: str) -> str:
    """The served name that answered an inference of `name` (OIP `model_name`)."""
    answer = client.post(f"/v2/models/{name}/infer", json=infer_body())
    assert answer.status_code == 200, answer.text
    return answer.json()["model_name"]


def _wait_served(client, name: str) -> None:
    deadline = time.monotonic() + 60
    while client.post(f"/v2/models/{name}/infer", json=infer_body()).status_code != 200:
        assert time.monotonic() < deadline, f"{name} was not served within 60 s"
        time.sleep(0.1)


def test_a_tenant_cannot_take_a_bundled_name_and_requests_never_cross(cp):
    """Issue 13's reproducer: a tenant deploys another model under a bundled model's name."""
    process, keys = cp
    with process.client(keys["quota-a"]) as a, process.client(keys["admin"]) as admin:
        made = _deploy(a, "ops-model", 1, CPU, model="beta-model")
        assert made.status_code == 201 and made.json()["name"] == "quota-a:ops-model"
        _wait_served(a, "ops-model")
        # every operator call reaches the operator's replica; every tenant call its own
        assert {_served_by(admin, "ops-model") for _ in range(12)} == {"ops-model"}
        assert {_served_by(a, "ops-model") for _ in range(12)} == {"quota-a:ops-model"}
        # the operator cannot put a deployment under a bundled name either (its replicas would mix)
        clash = _deploy(admin, "ops-model", 1, CPU, model="beta-model")
        assert clash.status_code == 409 and "bundled model" in _error(clash)
        assert a.delete("/api/v1/deployments/ops-model").status_code == 204


def test_names_reveal_nothing_of_other_tenants(cp):
    process, keys = cp
    with process.client(keys["quota-a"]) as a, process.client(keys["quota-b"]) as b:
        assert _deploy(b, "shared-name", 0, CPU, model="beta-model").status_code == 201
        # the same name in another tenant's name space is free: no 409 that would reveal b's
        mine = _deploy(a, "shared-name", 0, CPU)
        assert mine.status_code == 201 and mine.json()["name"] == "quota-a:shared-name"
        again = _deploy(a, "shared-name", 0, CPU)
        assert again.status_code == 409  # only ever a collision with one's own deployment
        # naming into another tenant's name space is refused by the caller's own rule, whether or not
        # that name exists there
        answers = {}
        for foreign in ("quota-b:shared-name", "quota-b:never-made"):
            refused = _deploy(a, foreign, 0, CPU)
            assert refused.status_code == 400 and "quota-a:NAME" in _error(refused)
            answers[foreign] = _error(refused).replace(foreign, "<name>")
            assert a.get(f"/api/v1/deployments/{foreign}").status_code == 404
        assert len(set(answers.values())) == 1, answers  # the same words for a taken and a free name
        assert a.delete("/api/v1/deployments/shared-name").status_code == 204
        assert b.delete("/api/v1/deployments/shared-name").status_code == 204


def test_operator_names_have_no_tenant_part(cp):
    process, keys = cp
    with process.client(keys["admin"]) as admin:
        refused = _deploy(admin, "quota-a:by-admin", 0, CPU)
        assert refused.status_code == 400 and "tenant's name" in _error(refused)
        for_tenant = _deploy(admin, "by-admin", 0, CPU, tenant="quota-a")
        assert for_tenant.status_code == 201 and for_tenant.json()["name"] == "quota-a:by-admin"
        assert admin.delete("/api/v1/deployments/quota-a:by-admin").status_code == 204


def test_the_autoscaler_never_scales_a_tenant_past_its_quota_and_says_so(cp):
    process, keys = cp
    with process.client(keys["admin"]) as admin:
        assert admin.post("/api/v1/tenants", json={"name": "quota-c"}).status_code == 201
        key = admin.post("/api/v1/keys", json={"tenant": "quota-c"}).json()["key"]
    _set_quota(cp, "quota-c", max_replicas=2)
    policy = {"min_replicas": 1, "max_replicas": 4, "metric": "rps", "target": 0.5,
              "stable_window_s": 2, "panic_window_s": 1, "downscale_delay_s": 600}
    with process.client(key) as c:
        made = _deploy(c, "c-auto", 1, CPU, autoscale=policy)
        assert made.status_code == 201, made.text
        _wait_served(c, "c-auto")
        deadline = time.monotonic() + 60
        refused: list[dict] = []
        while not refused:  # a few requests a second ask for 4+ replicas at 0.5 requests/s each
            assert time.monotonic() < deadline, "no refusal was recorded within 60 s"
            c.post("/v2/models/c-auto/infer", json=infer_body())
            refused = [e for e in c.get("/api/v1/events", params={"deployment": "c-auto"}).json()
                       if e["kind"] == "autoscale.refused"]
        assert "quota exceeded" in refused[0]["message"] and "allows 2" in refused[0]["message"]
        while c.get("/api/v1/deployments/c-auto").json()["replicas"] != 2:  # the most the quota allows
            assert time.monotonic() < deadline, "the autoscaler did not take the 2 replicas the quota allows"
            c.post("/v2/models/c-auto/infer", json=infer_body())
        time.sleep(1.5)  # more intervals of load: still held at the quota
        assert c.get("/api/v1/deployments/c-auto").json()["replicas"] == 2
