"""The control plane's tables, as SQLAlchemy 2 typed ORM classes on one shared `Base`.

The database holds *desired* state (deployments), *decided* state (replicas on devices, and the
placements with every candidate's reason) and what happened (events). Actual state (which
processes run) lives in the executor; the reconciler makes the two agree. So a restart loses
nothing: everything needed to rebuild the farm's serving is here.

Tables are created only by the Alembic migrations in `migrations/versions`; a change here needs
a new revision there (see docs/control-plane.md). Other packages (tenancy) extend `Base` with
their own classes and their own revisions.

Events and placement candidates name devices and deployments by value, not by foreign key, so
that the history survives the deletion of what it talks about.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kcloud.store.base import Base, utcnow

DEPLOYMENT_STATUSES = ("pending", "progressing", "ready", "degraded")
POLICIES = ("spread", "binpack")
#: Replica lifecycle: `placed` (decided, not started) → `starting` → `running`; `evicting` (its
#: device is drained: a replacement is placed first, then it is stopped); `stopping` (scaled
#: down or deleted: stopped, then its row removed).
REPLICA_STATES = ("placed", "starting", "running", "evicting", "stopping")


class NodeRow(Base):
    """A node (server) as the control plane records it; `kcloud.devices.inventory.Node` is the
    node as discovered. Named like the other rows so the two never share a name."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)

    devices: Mapped[list[DeviceRow]] = relationship(back_populates="node_row", cascade="all, delete-orphan")


class DeviceRow(Base):
    """A device as the control plane knows it; `drained` and `healthy` survive restarts."""

    __tablename__ = "devices"

    uid: Mapped[str] = mapped_column(String(255), primary_key=True)
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="CASCADE"), index=True)
    local_id: Mapped[str] = mapped_column(String(128))
    plugin: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(64))
    chip_key: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    emulated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Seen in the latest inventory of its node. An absent device keeps its row (and history).
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    health_reason: Mapped[str | None] = mapped_column(Text)
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    drain_reason: Mapped[str | None] = mapped_column(Text)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    runtimes: Mapped[list[str]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    node_row: Mapped[NodeRow] = relationship(back_populates="devices")


class ModelRow(Base):
    """A model version that a deployment refers to, as it was when it was deployed."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str] = mapped_column(String(64))
    device_kinds: Mapped[list[str]] = mapped_column(default=list)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    flops_per_sample: Mapped[float | None] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """Desired state: this model, this many replicas, under these constraints and SLO."""

    __tablename__ = "deployments"
    __table_args__ = (
        CheckConstraint("replicas >= 0", name="replicas_not_negative"),
        CheckConstraint("policy IN ('spread', 'binpack')", name="policy_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    #: Owner; `None` until tenancy assigns one (an admin's deployment belongs to no tenant).
    tenant: Mapped[str | None] = mapped_column(String(255), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    #: True when the user named the version; otherwise it was the latest at deploy time.
    version_pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    replicas: Mapped[int] = mapped_column(Integer)
    constraint_vendor: Mapped[str | None] = mapped_column(String(64))
    constraint_chip: Mapped[str | None] = mapped_column(String(128))
    constraint_precision: Mapped[str | None] = mapped_column(String(16))
    constraint_node: Mapped[str | None] = mapped_column(String(255))
    policy: Mapped[str] = mapped_column(String(16), default="spread")
    slo_p99_ms: Mapped[float | None] = mapped_column(Float)
    slo_throughput_rps: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="progressing")
    status_reason: Mapped[str | None] = mapped_column(Text)
    #: Bumped when the model version or constraints change: older replicas are then replaced.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    #: Made by `kcloud up` for a model it serves by itself (the next start removes it when the
    #: model is no longer served); False for deployments made through the API.
    bundled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Intra-op threads per replica; None: the runtime's default layout for the device.
    threads: Mapped[int | None] = mapped_column(Integer)
    #: The autoscaling policy (`kcloud.farm.spec.Autoscale` as JSON); None: `replicas` is fixed.
    #: None is stored as SQL NULL (not JSON `null`), so `IS NOT NULL` finds the autoscaled ones.
    autoscale: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    #: Stages asked for (None: as many as the model needs to fit a device, 1 if it fits one).
    stages: Mapped[int | None] = mapped_column(Integer)
    #: The pipeline it is served as (`kcloud.models.staged.StagePlan.as_json`); None: one device.
    stage_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    model: Mapped[ModelRow] = relationship(lazy="joined", innerjoin=True)
    replica_rows: Mapped[list[ReplicaRow]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", passive_deletes=True
    )


class ReplicaRow(Base):
    """One replica: which device it was placed on and, while it runs, its executor handle."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    device_uid: Mapped[str] = mapped_column(ForeignKey("devices.uid"), index=True)
    placement_id: Mapped[int | None] = mapped_column(ForeignKey("placements.id", ondelete="SET NULL"))
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="placed")
    #: Device memory this replica holds (the model's `memory_bytes`), for memory fit.
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: Share of the device's modelled capacity that the SLO throughput asks of this replica.
    load_share: Mapped[float | None] = mapped_column(Float)
    #: A pipeline replica's devices, one per stage in order (the first is `device_uid`); None for
    #: a replica on one device. Each stage's memory is its deployment's `stage_plan`'s.
    stage_devices: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    executor: Mapped[str | None] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(Integer)
    handle: Mapped[dict[str, Any] | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="replica_rows")


class PlacementRow(Base):
    """One placement decision for one deployment, with a reason for every candidate device."""

    __tablename__ = "placements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: What asked for it: create, scale, update, failover, drain, reservation, restore, retry.
    trigger: Mapped[str] = mapped_column(String(32))
    policy: Mapped[str] = mapped_column(String(16))
    requested: Mapped[int] = mapped_column(Integer)
    placed: Mapped[int] = mapped_column(Integer)
    #: placed (all), partial (some), pending (none).
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)

    candidates: Mapped[list[PlacementCandidate]] = relationship(
        back_populates="placement",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="PlacementCandidate.id",
    )


class PlacementCandidate(Base):
    __tablename__ = "placement_candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    placement_id: Mapped[int] = mapped_column(ForeignKey("placements.id", ondelete="CASCADE"), index=True)
    device_uid: Mapped[str] = mapped_column(String(255))
    #: Replicas placed on this device by this decision (0: not chosen).
    chosen: Mapped[int] = mapped_column(Integer, default=0)
    #: Passed every filter (a device can be eligible and still not chosen).
    eligible: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    perf_per_watt: Mapped[float | None] = mapped_column(Float)
    #: True: perf per watt modelled from the catalog; False: measured by bench; None: unknown.
    perf_modelled: Mapped[bool | None] = mapped_column(Boolean)

    placement: Mapped[PlacementRow] = relationship(back_populates="candidates")


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: e.g. deployment.created, placement.pending, replica.started, replica.died, device.drained.
    kind: Mapped[str] = mapped_column(String(64), index=True)
    deployment: Mapped[str | None] = mapped_column(String(255), index=True)
    device_uid: Mapped[str | None] = mapped_column(String(255))
    replica_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column()


class ReservationRow(Base):
    """Devices and nodes set aside for one tenant, its virtual cluster (`kcloud.farm.reservations`).

    The tenant is named by value, as deployments name theirs: tenancy's tables sit above these.
    """

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The actor, as the audit log names it (`key:<prefix>`, `operator`).
    created_by: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)

    targets: Mapped[list[ReservationTarget]] = relationship(
        back_populates="reservation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
        order_by="ReservationTarget.id",
    )


class ReservationTarget(Base):
    """One device, or one whole node (its devices now and later), of a reservation. Each is in one
    reservation at most: the unique constraints hold that in the database itself. Named by value,
    like the events, so that a device leaving the inventory does not take the reservation with it."""

    __tablename__ = "reservation_targets"
    __table_args__ = (CheckConstraint("(device_uid IS NULL) <> (node IS NULL)", name="device_or_node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reservation_id: Mapped[int] = mapped_column(ForeignKey("reservations.id", ondelete="CASCADE"), index=True)
    device_uid: Mapped[str | None] = mapped_column(String(255), unique=True)
    node: Mapped[str | None] = mapped_column(String(255), unique=True)

    reservation: Mapped[ReservationRow] = relationship(back_populates="targets")
