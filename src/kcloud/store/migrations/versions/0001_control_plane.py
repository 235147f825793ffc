"""Control plane: nodes, devices, models, deployments, replicas, placements with reasons, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Written against `kcloud.farm.schema` as of this revision; later changes go in new revisions.
Types are spelled out (no imports from kcloud) so that this file keeps meaning the same thing
when the ORM classes move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("deployment", sa.String(length=255), nullable=True),
        sa.Column("device_uid", sa.String(length=255), nullable=True),
        sa.Column("replica_id", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_deployment", "events", ["deployment"])
    op.create_index("ix_events_kind", "events", ["kind"])

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("device_kinds", sa.JSON(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("flops_per_sample", sa.Float(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("registered_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_index("ix_models_name", "models", ["name"])

    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("first_seen", Timestamp, nullable=False),
        sa.Column("last_seen", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )

    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_pinned", sa.Boolean(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("constraint_vendor", sa.String(length=64), nullable=True),
        sa.Column("constraint_chip", sa.String(length=128), nullable=True),
        sa.Column("constraint_precision", sa.String(length=16), nullable=True),
        sa.Column("constraint_node", sa.String(length=255), nullable=True),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("slo_p99_ms", sa.Float(), nullable=True),
        sa.Column("slo_throughput_rps", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint("policy IN ('spread', 'binpack')", name="ck_deployments_policy_known"),
        sa.CheckConstraint("replicas >= 0", name="ck_deployments_replicas_not_negative"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_deployments_model_id_models"),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.UniqueConstraint("name", name="uq_deployments_name"),
    )
    op.create_index("ix_deployments_model_id", "deployments", ["model_id"])
    op.create_index("ix_deployments_tenant", "deployments", ["tenant"])

    op.create_table(
        "devices",
        sa.Column("uid", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("local_id", sa.String(length=128), nullable=False),
        sa.Column("plugin", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=False),
        sa.Column("chip_key", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("emulated", sa.Boolean(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("health_reason", sa.Text(), nullable=True),
        sa.Column("drained", sa.Boolean(), nullable=False),
        sa.Column("drain_reason", sa.Text(), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("runtimes", sa.JSON(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"], name="fk_devices_node_nodes", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uid", name="pk_devices"),
    )
    op.create_index("ix_devices_node", "devices", ["node"])

    op.create_table(
        "placements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("requested", sa.Integer(), nullable=False),
        sa.Column("placed", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_placements_deployment_id_deployments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_placements"),
    )
    op.create_index("ix_placements_deployment_id", "placements", ["deployment_id"])

    op.create_table(
        "placement_candidates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("placement_id", sa.Integer(), nullable=False),
        sa.Column("device_uid", sa.String(length=255), nullable=False),
        sa.Column("chosen", sa.Integer(), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("perf_per_watt", sa.Float(), nullable=True),
        sa.Column("perf_modelled", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["placement_id"],
            ["placements.id"],
            name="fk_placement_candidates_placement_id_placements",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_placement_candidates"),
    )
    op.create_index("ix_placement_candidates_placement_id", "placement_candidates", ["placement_id"])

    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("device_uid", sa.String(length=255), nullable=False),
        sa.Column("placement_id", sa.Integer(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("load_share", sa.Float(), nullable=True),
        sa.Column("executor", sa.String(length=32), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("handle", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_replicas_deployment_id_deployments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["device_uid"], ["devices.uid"], name="fk_replicas_device_uid_devices"),
        sa.ForeignKeyConstraint(
            ["placement_id"],
            ["placements.id"],
            name="fk_replicas_placement_id_placements",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
    )
    op.create_index("ix_replicas_deployment_id", "replicas", ["deployment_id"])
    op.create_index("ix_replicas_device_uid", "replicas", ["device_uid"])


def downgrade() -> None:
    for table in (
        "replicas",
        "placement_candidates",
        "placements",
        "devices",
        "deployments",
        "nodes",
        "models",
        "events",
    ):
        op.drop_table(table)
