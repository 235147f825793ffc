"""Autoscaling: a deployment's autoscale policy.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

`deployments.autoscale` holds the policy as JSON (`kcloud.farm.spec.Autoscale`: min and max
replicas, metric and target, windows and delays), checked by the API before it is written; NULL
for a deployment whose replica count is fixed. The autoscaler's live state is not stored: it is
rebuilt from the load after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("autoscale", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("autoscale")
