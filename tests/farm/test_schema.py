"""The schema the migrations create: constraints hold in the database itself, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from kcloud.farm.schema import (
    Deployment,
    DeviceRow,
    EventRow,
    ModelRow,
    NodeRow,
    PlacementCandidate,
    PlacementRow,
    ReplicaRow,
)


def _seed(session) -> Deployment:
    session.add(NodeRow(name="n1"))
    session.add(
        DeviceRow(
            uid="n1/d0",
            node="n1",
            local_id="d0",
            plugin="emulated",
            vendor="furiosa",
            chip_key="furiosa-rngd",
            kind="npu",
            name="RNGD",
            emulated=True,
            memory_bytes=48 * 2**30,
            runtimes=["onnxruntime-cpu"],
        )
    )
    model = ModelRow(
        name="m",
        version=1,
        platform="onnxruntime",
        device_kinds=["cpu", "npu"],
        memory_bytes=None,
        flops_per_sample=None,
    )
    dep = Deployment(name="d", model=model, replicas=1, policy="spread", status="pending", generation=1)
    session.add(dep)
    session.flush()
    return dep


def test_negative_replicas_are_refused_by_the_database(database):
    with pytest.raises(IntegrityError), database.transaction() as session:
        dep = _seed(session)
        dep.replicas = -1
        session.flush()
    with database.session() as session:  # and the whole transaction rolled back
        assert session.scalars(sa.select(Deployment)).all() == []
        assert session.scalars(sa.select(NodeRow)).all() == []


def test_deleting_a_deployment_deletes_its_replicas_and_placements_but_not_events(database):
    with database.transaction() as session:
        dep = _seed(session)
        placement = PlacementRow(
            deployment_id=dep.id,
            trigger="create",
            policy="spread",
            requested=1,
            placed=1,
            outcome="placed",
            reason="r",
        )
        session.add(placement)
        session.flush()
        session.add(
            PlacementCandidate(
                placement_id=placement.id, device_uid="n1/d0", chosen=1, eligible=True, reason="chosen"
            )
        )
        session.add(ReplicaRow(id="d-1", deployment_id=dep.id, device_uid="n1/d0", placement_id=placement.id))
        session.add(EventRow(kind="deployment.created", message="m", deployment="d", data={"k": [1, 2]}))
    with database.transaction() as session:
        session.delete(session.scalar(sa.select(Deployment)))
    with database.session() as session:
        assert session.scalars(sa.select(ReplicaRow)).all() == []
        assert session.scalars(sa.select(PlacementRow)).all() == []
        assert session.scalars(sa.select(PlacementCandidate)).all() == []
        event = session.scalar(sa.select(EventRow))
        assert event.data == {"k": [1, 2]}  # JSON round-trips on both engines
        assert event.at.tzinfo is not None and event.at.utcoffset().total_seconds() == 0


def test_a_replica_must_sit_on_a_known_device(database):
    with pytest.raises(IntegrityError), database.transaction() as session:
        dep = _seed(session)
        session.add(ReplicaRow(id="d-1", deployment_id=dep.id, device_uid="nowhere/d9"))
        session.flush()


def test_model_versions_are_unique_and_timestamps_stay_utc(database):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with database.transaction() as session:
        session.add(
            ModelRow(name="m", version=1, platform="onnxruntime", device_kinds=[], registered_at=when)
        )
    with database.session() as session:
        assert session.scalar(sa.select(ModelRow.registered_at)) == when
    with pytest.raises(IntegrityError), database.transaction() as session:
        session.add(ModelRow(name="m", version=1, platform="onnxruntime", device_kinds=[]))
        session.flush()
