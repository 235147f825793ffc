"""Pipeline deployments: a model split into stages over several devices.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

`deployments.stages` is the stage count asked for (NULL: as many as the model needs to fit a
device); `deployments.stage_plan` the plan decided (`kcloud.models.staged.StagePlan`: cut
positions, per-stage memory and cost share), NULL for a deployment served whole on one device.
`replicas.stage_devices` lists a pipeline replica's devices in stage order (the first is also
`replicas.device_uid`, so every query by device still finds the replica's first stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("stages", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("stage_plan", sa.JSON(), nullable=True))
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("stage_devices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("stage_devices")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("stage_plan")
        batch.drop_column("stages")
