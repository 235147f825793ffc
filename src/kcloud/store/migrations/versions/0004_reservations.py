"""Reservations: devices or nodes set aside for one tenant, its virtual cluster.

Revision ID: 0004
Revises: 0101
Create Date: 2026-12-06

The control plane's series goes on from 0003 (tenancy's stays in the 0100s); it revises the head
of the day, 0101. `reservations` names its tenant by value, as `deployments` does, since the
control plane's tables take no foreign key into tenancy's. `reservation_targets` holds one device
uid or one node name per row (a node covers every device on it, those that join later too); the
unique constraints keep a device, and a node, in one reservation at most. Types are spelled out,
as in `0001_control_plane`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0101"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reservations"),
    )
    op.create_index("ix_reservations_tenant", "reservations", ["tenant"])
    op.create_table(
        "reservation_targets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reservation_id", sa.Integer(), nullable=False),
        sa.Column("device_uid", sa.String(length=255), nullable=True),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.CheckConstraint(
            "(device_uid IS NULL) <> (node IS NULL)", name="ck_reservation_targets_device_or_node"
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
            name="fk_reservation_targets_reservation_id_reservations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reservation_targets"),
        sa.UniqueConstraint("device_uid", name="uq_reservation_targets_device_uid"),
        sa.UniqueConstraint("node", name="uq_reservation_targets_node"),
    )
    op.create_index("ix_reservation_targets_reservation_id", "reservation_targets", ["reservation_id"])


def downgrade() -> None:
    for table in ("reservation_targets", "reservations"):
        op.drop_table(table)
