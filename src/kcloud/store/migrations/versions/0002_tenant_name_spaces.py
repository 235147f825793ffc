"""Tenant name spaces: a tenant's deployments are served as `TENANT:NAME`.

Revision ID: 0002
Revises: 0100
Create Date: 2026-12-04

Before this revision a tenant's deployment took any free name, so a tenant could take a name the
operator served, and learn from a 409 that another tenant had one. From now on a tenant's names
are `TENANT:NAME` (`kcloud.farm.names`); existing tenant deployments are renamed into their
tenant's name space here, so one rule holds for every row. Events and usage keep the old name as
history (they name deployments by value). A tenant that called `minilm` keeps reaching it as
`minilm`: its bare names resolve inside its name space.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE deployments SET name = tenant || ':' || name "
        "WHERE tenant IS NOT NULL AND name NOT LIKE tenant || ':%'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE deployments SET name = substr(name, length(tenant) + 2) "
        "WHERE tenant IS NOT NULL AND name LIKE tenant || ':%'"
    )
