"""Tenant virtual clusters (reservations) over the admin API and the CLI, on a real gateway with
the control plane attached (as `kcloud up` runs it), on SQLite and PostgreSQL.

An admin reserves devices or nodes for a tenant: that tenant's deployments go only there and
nobody else's do; replicas of others already there move; the tenant sees its own reservations and
nothing of anyone else's; each change is in the events and the audit log. Each kind of bad input
is one test: a clear 4xx, and nothing that runs is disturbed.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from tenancy_support import GatewayProcess, fresh_database
from typer.testing import CliRunner

from kcloud.cli import app

pytestmark = pytest.mark.slow

#: Four emulated NPUs on four nodes (plus this machine's CPU): `emu` becomes res-a's virtual
#: cluster, `emu3` res-c's from the start, `emu4` the CLI test's; `emu2` stays shared.
FARM = """
[farm]
name = "reservations-test"

[[nodes]]
name = "emu"
devices = [{ chip = "rebellions-atom-ca22", id = "atom0" }, { chip = "rebellions-atom-ca22", id = "atom1" }]

[[nodes]]
name = "emu2"
devices = [{ chip = "rebellions-atom-ca22", id = "atom2" }]

[[nodes]]
name = "emu3"
devices = [{ chip = "rebellions-atom-ca22", id = "atom3" }]

[[nodes]]
name = "emu4"
devices = [{ chip = "rebellions-atom-ca22", id = "atom4" }]
"""
ATOM = {"chip": "rebellions-atom-ca22"}
TENANTS = ("res-a", "res-b", "res-c", "res-cli")


@pytest.fixture(scope="module")
def cp(backend, repo_path, tmp_path_factory):
    """The gateway, a member key per tenant (and a read-only one of res-a), res-b's deployment
    running on `emu`, and res-c holding `emu3/atom3`."""
    with fresh_database(backend, tmp_path_factory) as url:
        process = GatewayProcess(url, repo_path, tmp_path_factory.mktemp("res-home"), control_plane=True,
                                 farm=FARM)
        try:
            keys = {"admin": process.admin_key}
            with process.client(process.admin_key) as admin:
                for name in TENANTS:
                    assert admin.post("/api/v1/tenants", json={"name": name}).status_code == 201
                    keys[name] = admin.post("/api/v1/keys", json={"tenant": name}).json()["key"]
                keys["res-a-ro"] = admin.post("/api/v1/keys", json={"tenant": "res-a", "role": "readonly"}
                                              ).json()["key"]
                made = admin.post("/api/v1/reservations", json={"tenant": "res-c", "devices": ["emu3/atom3"]})
                assert made.status_code == 201, made.text
            with process.client(keys["res-b"]) as b:
                body = {"model": "beta-model", "name": "web", "replicas": 1, "constraints": ATOM}
                assert b.post("/api/v1/deployments", json=body).status_code == 201
                assert _running(b, "web")[0].startswith("emu/")
            yield process, keys
        finally:
            process.stop()


def _running(client: httpx.Client, name: str, timeout_s: float = 60) -> list[str]:
    """The devices of the deployment's replicas, once all it wants run and no other is left (none
    still moving off a device, none stopping)."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = client.get(f"/api/v1/deployments/{name}").json()
        replicas = view["replica_list"]
        settled = all(r["state"] == "running" for r in replicas)
        if settled and view["running"] == view["replicas"] == len(replicas):
            return sorted(r["device"] for r in replicas)
        assert time.monotonic() < deadline, f"{name} not ready within {timeout_s} s: {view}"
        time.sleep(0.1)


def _error(response: httpx.Response) -> str:
    return response.json()["error"]


def test_a_tenants_reservation_takes_its_deployments_and_moves_the_others(cp):
    process, keys = cp
    with process.client(keys["admin"]) as admin, process.client(keys["res-a"]) as a, \
            process.client(keys["res-b"]) as b:
        before = _running(b, "web")
        made = admin.post("/api/v1/reservations",
                          json={"tenant": "res-a", "nodes": ["emu"], "note": "res-a's cluster"})
        assert made.status_code == 201, made.text
        reservation = made.json()
        rid = reservation["id"]
        assert reservation["covers"] == ["emu/atom0", "emu/atom1"] and reservation["nodes"] == ["emu"]
        assert len(reservation["moving"]) == 1 and reservation["created_by"].startswith("key:")

        # res-b's replica moved off res-a's node (placed elsewhere, then stopped), and nothing was lost
        after = _running(b, "web")
        assert after != before and not any(device.startswith("emu/") for device in after)
        explain = b.get("/api/v1/deployments/web/placement").json()
        assert explain["placements"][0]["trigger"] == "reservation"
        rejected = {c["device"]: c["reason"] for c in explain["placements"][0]["candidates"]}
        assert rejected["emu/atom0"] == "rejected: reserved for another tenant"
        assert "res-a" not in json.dumps(explain)  # res-b learns nothing of res-a

        # res-a's deployment goes only there, and explain says why
        body = {"model": "alpha-model", "name": "web", "replicas": 2}
        assert a.post("/api/v1/deployments", json=body).status_code == 201
        assert _running(a, "web") == ["emu/atom0", "emu/atom1"]
        placement = a.get("/api/v1/deployments/web/placement").json()["placements"][0]
        assert f"in tenant res-a's reservation(s) {rid}" in placement["reason"]
        reasons = {c["device"]: c["reason"] for c in placement["candidates"]}
        assert reasons["emu/atom0"].startswith(f"chosen for 1 replica(s) (in reservation {rid} of tenant")
        assert reasons["emu2/atom2"].startswith(f"rejected: outside tenant res-a's reservation(s) {rid}")

        # the tenant sees its own reservations (read-only), in its tenant view too; nobody else's
        with process.client(keys["res-a-ro"]) as ro:
            assert [r["id"] for r in ro.get("/api/v1/reservations").json()] == [rid]
            assert ro.get(f"/api/v1/reservations/{rid}").json()["note"] == "res-a's cluster"
            assert ro.delete(f"/api/v1/reservations/{rid}").status_code == 403
        assert [r["covers"] for r in a.get("/api/v1/tenants/res-a").json()["reservations"]] == [
            ["emu/atom0", "emu/atom1"]]
        assert b.get("/api/v1/reservations").json() == []
        assert b.get(f"/api/v1/reservations/{rid}").status_code == 404
        assert b.get("/api/v1/reservations", params={"tenant": "res-a"}).status_code == 404
        assert {r["tenant"] for r in admin.get("/api/v1/reservations").json()} == {"res-a", "res-c"}

        # recorded: the control plane's events and the audit log
        kinds = [e["kind"] for e in admin.get("/api/v1/events", params={"limit": 1000}).json()]
        assert "reservation.created" in kinds and "replica.evicting" in kinds
        audit = admin.get("/api/v1/audit", params={"action": "reservation.create"}).json()
        assert any(e["target"] == "res-a" and e["status"] == 201 and e["detail"]["reservation"] == rid
                   for e in audit)

        # deleted: nothing moves, the devices are shared again; recorded likewise
        assert admin.delete(f"/api/v1/reservations/{rid}").status_code == 204
        assert admin.get(f"/api/v1/reservations/{rid}").status_code == 404
        assert _running(a, "web") == ["emu/atom0", "emu/atom1"]
        kinds = [e["kind"] for e in admin.get("/api/v1/events", params={"limit": 1000}).json()]
        assert "reservation.deleted" in kinds
        audit = admin.get("/api/v1/audit", params={"action": "reservation.delete"}).json()
        assert any(e["target"] == str(rid) and e["status"] == 204 for e in audit)
        assert a.delete("/api/v1/deployments/web").status_code == 204


def _snapshot(process: GatewayProcess, keys: dict[str, str]) -> tuple:
    """What must not change when a request is refused: reservations, events, res-b's replicas."""
    with process.client(keys["admin"]) as admin:
        web = admin.get("/api/v1/deployments/res-b:web").json()
        return (
            admin.get("/api/v1/reservations").json(),
            [e["id"] for e in admin.get("/api/v1/events", params={"limit": 1000}).json()],
            [(r["id"], r["device"], r["state"]) for r in web["replica_list"]],
            web["status"],
        )


@pytest.mark.parametrize(
    ("key", "body", "status", "message"),
    [
        pytest.param("admin", {"tenant": "res-a", "devices": ["emu/atom0", "emu/nope"]}, 404,
                     "unknown device(s): emu/nope", id="unknown-device"),
        pytest.param("admin", {"tenant": "res-a", "nodes": ["emu", "nowhere"]}, 404,
                     "unknown node(s): nowhere", id="unknown-node"),
        pytest.param("admin", {"tenant": "res-b", "devices": ["emu3/atom3"]}, 409,
                     "already reserved: device emu3/atom3 is in reservation", id="reserved-by-another"),
        pytest.param("admin", {"tenant": "res-c", "devices": ["emu3/atom3"]}, 409,
                     "of tenant res-c", id="reserved-by-this-tenant"),
        pytest.param("admin", {"tenant": "res-b", "nodes": ["emu3"]}, 409,
                     "already reserved: device emu3/atom3", id="node-holding-a-reserved-device"),
        pytest.param("admin", {"tenant": "ghost", "devices": ["emu2/atom2"]}, 404,
                     "tenant 'ghost' not found", id="unknown-tenant"),
        pytest.param("admin", {"tenant": "res-a"}, 400, "at least one device or node", id="empty-set"),
        pytest.param("admin", {"tenant": "res-a", "devices": [], "nodes": []}, 400,
                     "at least one device or node", id="empty-lists"),
        pytest.param("res-a", {"tenant": "res-a", "devices": ["emu2/atom2"]}, 403,
                     "only an admin may reserve devices", id="member-key"),
        pytest.param("res-a-ro", {"tenant": "res-a", "devices": ["emu2/atom2"]}, 403, "read-only",
                     id="read-only-key"),
    ],
)
def test_a_bad_reservation_is_a_clear_4xx_and_disturbs_nothing(cp, key, body, status, message):
    process, keys = cp
    before = _snapshot(process, keys)
    with process.client(keys[key]) as client:
        refused = client.post("/api/v1/reservations", json=body)
    assert refused.status_code == status, refused.text
    assert message in _error(refused)
    assert _snapshot(process, keys) == before


def test_deletes_that_are_refused_disturb_nothing(cp):
    process, keys = cp
    before = _snapshot(process, keys)
    rid = before[0][0]["id"]  # res-c's
    with process.client(keys["res-c"]) as c, process.client(keys["admin"]) as admin:
        assert "only an admin may delete reservations" in _error(c.delete(f"/api/v1/reservations/{rid}"))
        missing = admin.delete("/api/v1/reservations/999999")
        assert missing.status_code == 404 and "reservation 999999 not found" in _error(missing)
        held = admin.delete("/api/v1/tenants/res-c")  # a tenant holding a reservation stays
        assert held.status_code == 409 and f"still holds reservation(s) {rid}" in _error(held)
    assert _snapshot(process, keys) == before


def test_reservations_through_the_cli(cp):
    process, keys = cp
    runner = CliRunner()

    def kcloud(*args: str, key: str = "admin"):
        env = {"KCLOUD_URL": process.url, "KCLOUD_API_KEY": keys[key], "COLUMNS": "200"}
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    made = kcloud("reservations", "create", "--tenant", "res-cli", "--node", "emu4", "--note", "by the CLI",
                  "--json")
    rid = json.loads(made)["id"]
    listed = kcloud("reservations", "list")
    assert "res-cli" in listed and "emu4" in listed and "by the CLI" in listed
    assert "emu3/atom3" in listed  # res-c's: an admin sees every reservation
    assert "emu3/atom3" not in kcloud("reservations", "list", key="res-cli")  # its own only
    assert f"reservation {rid}" in kcloud("tenants", "show", "res-cli")

    with process.client(keys["res-cli"]) as tenant:
        body = {"model": "alpha-model", "name": "cli", "replicas": 1}
        assert tenant.post("/api/v1/deployments", json=body).status_code == 201
        assert _running(tenant, "cli") == ["emu4/atom4"]
    explained = kcloud("placement", "explain", "cli", key="res-cli")
    assert f"(in reservation {rid} of tenant res-cli)" in explained

    refused = runner.invoke(app, ["reservations", "create", "--tenant", "res-cli"],
                            env={"KCLOUD_URL": process.url, "KCLOUD_API_KEY": keys["admin"]})
    assert refused.exit_code != 0 and "--device UID and/or --node NAME" in refused.output
    conflict = runner.invoke(app, ["reservations", "create", "--tenant", "res-b", "--device", "emu4/atom4"],
                             env={"KCLOUD_URL": process.url, "KCLOUD_API_KEY": keys["admin"]})
    assert conflict.exit_code != 0 and "409: already reserved" in conflict.output
    assert f"deleted reservation {rid}" in kcloud("reservations", "delete", str(rid))
    with process.client(keys["res-cli"]) as tenant:
        assert tenant.delete("/api/v1/deployments/cli").status_code == 204


def test_a_server_without_its_control_plane_in_the_database_has_no_reservations(gateway, keys):
    """The shared test gateway keeps its control plane in memory (no deployments API): reservations
    answer 404 with why, and tenants show none."""
    with gateway.client(keys["admin"]) as admin:
        body = {"tenant": "alpha", "devices": ["emu/atom0"]}
        for refused in (admin.get("/api/v1/reservations"), admin.post("/api/v1/reservations", json=body)):
            assert refused.status_code == 404 and "runs no control plane" in _error(refused)
        assert admin.get("/api/v1/tenants/alpha").json()["reservations"] == []
