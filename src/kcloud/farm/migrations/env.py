"""Alembic environment for kcloud's schema.

kcloud runs the migrations itself (`kcloud.farm.db.migrate`), handing over an open connection in
`config.attributes["connection"]` so that the upgrade happens inside its own transaction. A
developer running the `alembic` command instead gets an engine from `$KCLOUD_DB_URL`.
SQLite cannot ALTER most things, so migrations run in batch mode there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from kcloud.farm.db import create_db_engine, load_model_modules, resolve_url
from kcloud.farm.schema import Base

load_model_modules()
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(resolve_url(None))
    try:
        with engine.begin() as fresh:
            _run(fresh)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("kcloud's migrations run online only (they need a connection)")
run_migrations_online()
