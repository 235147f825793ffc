"""Alembic environment for kcloud's schema.

kcloud runs the migrations itself (`kcloud.store.db.migrate`), handing over an open connection in
`config.attributes["connection"]` so that the upgrade happens inside its own transaction. A
developer running the `alembic` command instead gets an engine from `$KCLOUD_DB_URL`.
SQLite cannot ALTER most things, so migrations run in batch mode there.
"""

from __future__ import annotations

import importlib

from alembic import context
from sqlalchemy.engine import Connection

from kcloud.store.base import Base
from kcloud.store.db import create_db_engine, resolve_url

#: The tables of the packages imported so far (each registers its own on `Base`); kcloud's own
#: `migrate` needs no more, as the revisions spell out their tables.
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
    # The `alembic` command imports no package: it names the schema modules to compare with
    # (`-x schemas=kcloud.farm.schema,kcloud.tenancy.schema`), or autogenerate would see no tables.
    for module in filter(None, context.get_x_argument(as_dictionary=True).get("schemas", "").split(",")):
        importlib.import_module(module)
    if not target_metadata.tables:
        raise SystemExit("name the schema modules: alembic -x "
                         "schemas=kcloud.farm.schema,kcloud.tenancy.schema ...")
    engine = create_db_engine(resolve_url(None))
    try:
        with engine.begin() as fresh:
            _run(fresh)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("kcloud's migrations run online only (they need a connection)")
run_migrations_online()
