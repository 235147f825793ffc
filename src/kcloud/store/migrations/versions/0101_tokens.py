"""Tokens: token limits per key and per tenant, and token usage.

Revision ID: 0101
Revises: 0003
Create Date: 2026-12-05

For the LLM routes (`kcloud.tenancy.tokens`): `api_keys` and `tenant_quotas` gain
`tokens_per_minute` and `tokens_per_day` (NULL: no limit, which is what every existing key and
quota keeps), and `usage` gains `prompt_tokens` and `completion_tokens` (0 for the rows already
there: nothing generated tokens before). BIGINT, as a day's tokens of a large tenant can pass
PostgreSQL's 32-bit INTEGER. Types are spelled out, as in `0100_tenancy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0101"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIMITS = ("tokens_per_minute", "tokens_per_day")
_COUNTS = ("prompt_tokens", "completion_tokens")


def upgrade() -> None:
    for table in ("api_keys", "tenant_quotas"):
        with op.batch_alter_table(table) as batch:
            for name in _LIMITS:
                batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    with op.batch_alter_table("usage") as batch:
        for name in _COUNTS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        for name in reversed(_COUNTS):
            batch.drop_column(name)
    for table in ("tenant_quotas", "api_keys"):
        with op.batch_alter_table(table) as batch:
            for name in reversed(_LIMITS):
                batch.drop_column(name)
