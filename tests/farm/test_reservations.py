"""Reservations (a tenant's virtual cluster) in the control plane, on both databases.

What placement does with them (a tenant's deployments go only to its reserved devices, nobody
else's go there, the reasons say so), what reserving does to replicas already there (other
tenants' move, through the eviction path, as a drain), the refusals (nothing written), and the
records (events, the rows and their constraints in the database itself).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from test_reconciler import Farm, run

from kcloud.errors import ConflictError, NotFoundError
from kcloud.farm.profiles import ProfileBook
from kcloud.farm.reads import reservations as read_reservations
from kcloud.farm.schema import EventRow, ReplicaRow, ReservationRow, ReservationTarget
from kcloud.farm.service import ControlPlaneService
from kcloud.farm.spec import Constraints, DeploymentCreate, ReservationCreate


@pytest.fixture
def service(database, repository, inventory) -> ControlPlaneService:
    svc = ControlPlaneService(database, repository, inventory.devices, profiles=ProfileBook())
    svc.sync_inventory()
    return svc


def reserve(service: ControlPlaneService, tenant: str, *, devices=(), nodes=(), **options):
    spec = ReservationCreate(tenant=tenant, devices=list(devices), nodes=list(nodes))
    return service.reserve(spec, actor="key:test", **options)


def reasons(service: ControlPlaneService, name: str) -> dict[str, str]:
    """device -> the reason of the latest placement of `name`."""
    return {c.device: c.reason for c in service.explain(name).placements[0].candidates}


def test_a_tenant_is_placed_only_on_its_reservation_and_nobody_else_is(service):
    made = reserve(service, "acme", devices=["npu-a/rngd0"])
    assert (made.tenant, made.devices, made.nodes) == ("acme", ["npu-a/rngd0"], [])
    assert made.covers == ["npu-a/rngd0"]
    assert made.moving == [] and made.created_by == "key:test"

    acme = service.create(DeploymentCreate(model="small", name="web", tenant="acme", replicas=2))
    assert {r.device for r in acme.replica_list} == {"npu-a/rngd0"}
    placement = service.explain("acme:web").placements[0]
    assert f"in tenant acme's reservation(s) {made.id}" in placement.reason
    why = reasons(service, "acme:web")
    assert why["npu-a/rngd0"].startswith(f"chosen for 2 replica(s) (in reservation {made.id} of tenant acme)")
    assert why["npu-a/rngd1"] == (
        f"rejected: outside tenant acme's reservation(s) {made.id} (its deployments are placed only there)"
    )

    # Another tenant's deployment avoids it, and its reasons do not name acme (they are beta's to read).
    beta = service.create(DeploymentCreate(model="small", name="web", tenant="beta", replicas=1))
    assert beta.replica_list[0].device == "npu-a/rngd1"
    why = reasons(service, "beta:web")
    assert why["npu-a/rngd0"] == "rejected: reserved for another tenant"
    assert not any("acme" in reason for reason in why.values())

    # The operator's deployments take no reserved device either; the operator reads whose it is.
    ops = service.create(DeploymentCreate(model="small", name="ops", replicas=1))
    assert ops.replica_list[0].device != "npu-a/rngd0"
    assert reasons(service, "ops")["npu-a/rngd0"] == (
        f"rejected: reserved for tenant acme (reservation {made.id})"
    )


def test_a_reservation_without_room_leaves_the_deployment_pending_and_names_it(service):
    made = reserve(service, "acme", devices=["npu-a/atom-ca22-0"])
    view = service.create(DeploymentCreate(model="big", name="llm", tenant="acme", replicas=1))
    assert view.status == "pending"
    assert f"no device fits 1 replica(s) of big in tenant acme's reservation(s) {made.id}" in view.reason
    assert "1 not enough free memory (needs 20.0 GiB; largest free 16.0 GiB)" in view.reason
    assert "6 outside the tenant's reservations" in view.reason

    second = reserve(service, "acme", devices=["npu-a/rngd0"])  # room for two 20 GiB replicas
    view = service.scale("acme:llm", 3)
    assert [r.device for r in view.replica_list] == ["npu-a/rngd0", "npu-a/rngd0"]
    assert view.status == "pending"
    assert f"no room for the rest in tenant acme's reservation(s) {made.id}, {second.id}" in view.reason


def test_reserving_moves_other_tenants_replicas_off_like_a_drain(database, repository, inventory):
    async def body() -> None:
        farm = Farm(database, repository, inventory)
        try:
            rngd = Constraints(chip="furiosa-rngd")
            for tenant in (None, "acme", "beta"):
                farm.service.create(DeploymentCreate(model="small", name="svc", tenant=tenant, replicas=2,
                                                     constraints=rngd))
            await farm.settle()
            on_rngd0 = {name: [rid for rid, uid in farm.running(name).items() if uid == "npu-a/rngd0"]
                        for name in ("svc", "acme:svc", "beta:svc")}
            assert all(len(ids) == 1 for ids in on_rngd0.values())

            made = reserve(farm.service, "acme", devices=["npu-a/rngd0"])
            assert sorted(made.moving) == sorted(on_rngd0["svc"] + on_rngd0["beta:svc"])
            events = farm.service.events()
            created = [e for e in events if e.kind == "reservation.created"]
            assert len(created) == 1 and "2 replica(s) of others move off" in created[0].message
            evicting = {e.replica: e.message for e in events if e.kind == "replica.evicting"}
            assert set(evicting) == set(made.moving)
            assert all(f"reserved for another tenant (reservation {made.id})" in m for m in evicting.values())

            await farm.settle()
            for name in ("svc", "beta:svc"):  # replaced elsewhere first, then stopped; nothing lost
                assert "npu-a/rngd0" not in farm.running(name).values()
                assert farm.service.get(name).status == "ready"
                assert farm.service.explain(name).placements[0].trigger == "reservation"
            # acme's own replica stays on its reserved device, and its other one where it was
            assert sorted(farm.running("acme:svc").values()) == ["npu-a/rngd0", "npu-a/rngd1"]
        finally:
            await farm.close()

    run(body)


def test_deleting_a_reservation_frees_its_devices_and_records_it(service):
    made = reserve(service, "beta", devices=["npu-a/rngd0", "npu-a/rngd1"])
    furiosa = Constraints(vendor="furiosa")
    view = service.create(DeploymentCreate(model="big", name="llm", replicas=1, constraints=furiosa))
    assert view.status == "pending" and "2 reserved for another tenant" in view.reason

    deleted = service.unreserve(made.id, actor="key:test")
    assert deleted.covers == ["npu-a/rngd0", "npu-a/rngd1"]
    assert service.list_reservations() == []
    assert "llm" in service.ensure_placements()  # freed capacity: the pending deployment is retried
    assert service.get("llm").replica_list[0].device.startswith("npu-a/rngd")
    message = [e.message for e in service.events() if e.kind == "reservation.deleted"]
    assert message == [f"reservation {made.id} of tenant beta deleted; its 2 device(s) take any tenant's "
                       f"replicas again"]
    with pytest.raises(NotFoundError, match=f"reservation {made.id} not found"):
        service.unreserve(made.id)


def test_a_node_reservation_covers_the_devices_that_join_it_later(database, repository, inventory):
    first = ControlPlaneService(
        database, repository, [d for d in inventory.devices if d.uid != "npu-b/atom9"], profiles=ProfileBook()
    )
    first.sync_inventory()
    made = reserve(first, "acme", nodes=["npu-b"])
    assert made.covers == ["npu-b/x220-0"]

    later = ControlPlaneService(database, repository, inventory.devices, profiles=ProfileBook())
    later.sync_inventory()  # atom9 joins npu-b
    assert later.get_reservation(made.id).covers == ["npu-b/atom9", "npu-b/x220-0"]
    on_b = Constraints(node="npu-b")
    view = later.create(DeploymentCreate(model="small", name="b", replicas=1, constraints=on_b))
    assert view.status == "pending"
    why = reasons(later, "b")
    assert why["npu-b/atom9"] == f"rejected: reserved for tenant acme (reservation {made.id})"
    acme = later.create(DeploymentCreate(model="small", name="b", tenant="acme", replicas=2))
    assert {r.device for r in acme.replica_list} <= {"npu-b/atom9", "npu-b/x220-0"}
    with database.session() as session:
        assert [r.nodes for r in read_reservations(session, "acme")] == [["npu-b"]]
        assert read_reservations(session, "beta") == []


@pytest.mark.parametrize(
    ("tenant", "devices", "nodes", "error", "message"),
    [
        ("beta", ["npu-a/nope", "npu-a/rngd1"], [], NotFoundError, r"unknown device\(s\): npu-a/nope"),
        ("beta", [], ["npu-z"], NotFoundError, r"unknown node\(s\): npu-z"),
        ("beta", ["npu-a/rngd0"], [], ConflictError, r"npu-a/rngd0 is in reservation \d+ of tenant acme"),
        ("acme", ["npu-a/rngd0"], [], ConflictError, r"already reserved: device npu-a/rngd0"),
        ("beta", ["npu-b/atom9"], [], ConflictError,
         r"node npu-b \(which holds npu-b/atom9\) is in reservation \d+ of tenant acme"),
        ("beta", [], ["npu-a"], ConflictError, r"device npu-a/rngd0 is in reservation \d+"),
        ("beta", [], ["npu-b"], ConflictError, r"node npu-b is in reservation \d+"),
    ],
)
def test_refused_reservations_write_nothing_and_move_nothing(service, database, tenant, devices, nodes, error,
                                                            message):
    reserve(service, "acme", devices=["npu-a/rngd0"], nodes=["npu-b"])
    running = service.create(DeploymentCreate(model="small", name="svc", tenant="beta", replicas=2))

    def state():
        with database.session() as session:
            return (
                session.scalars(sa.select(ReservationTarget.device_uid, ReservationTarget.node)).all(),
                session.execute(sa.select(ReplicaRow.id, ReplicaRow.device_uid, ReplicaRow.state)).all(),
                session.scalars(sa.select(EventRow.id)).all(),
            )

    before = state()
    with pytest.raises(error, match=message):
        reserve(service, tenant, devices=devices, nodes=nodes)
    assert state() == before
    assert service.get("beta:svc").replica_list == running.replica_list


def test_the_callers_check_refuses_an_unknown_tenant_and_an_empty_set_is_malformed(service, database):
    def unknown_tenant(session) -> None:
        raise NotFoundError("tenant 'ghost' not found")

    with pytest.raises(NotFoundError, match="tenant 'ghost' not found"):
        reserve(service, "ghost", devices=["npu-a/rngd0"], check=unknown_tenant)
    with pytest.raises(ValidationError, match="at least one device or node"):
        ReservationCreate(tenant="acme")
    with pytest.raises(ValidationError):
        ReservationCreate(tenant="Not A Tenant", devices=["npu-a/rngd0"])
    with database.session() as session:
        assert session.scalars(sa.select(ReservationRow)).all() == []
        assert session.scalars(sa.select(EventRow).where(EventRow.kind.like("reservation.%"))).all() == []


def test_the_database_keeps_a_device_or_node_in_one_reservation(database, service):
    made = reserve(service, "acme", devices=["npu-a/rngd0"], nodes=["npu-b"])
    for target in (ReservationTarget(device_uid="npu-a/rngd0"), ReservationTarget(node="npu-b"),
                   ReservationTarget(), ReservationTarget(device_uid="npu-a/rngd1", node="npu-a")):
        with pytest.raises(IntegrityError), database.transaction() as session:
            session.add(ReservationRow(tenant="beta", created_by="test", targets=[target]))
    with database.transaction() as session:  # deleting a reservation deletes its targets
        session.delete(session.get(ReservationRow, made.id))
    with database.session() as session:
        assert session.scalars(sa.select(ReservationTarget)).all() == []
