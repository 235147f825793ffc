"""Bundled deployments: what `kcloud up` serves by itself is an operator deployment like any other.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Before this revision `kcloud up` started the bundled models' replicas outside the control plane,
so placement did not see them. Now each is a deployment that `kcloud up` creates (or updates) at
start, marked `bundled` so that the next start can remove one whose model is no longer served,
and with the intra-op `threads` per replica that the local layout chose (NULL: the runtime's
default layout, as for every deployment made through the API).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("bundled", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("threads", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("threads")
        batch.drop_column("bundled")
