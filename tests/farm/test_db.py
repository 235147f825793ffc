"""The database: URLs, connecting, migrating at startup, and refusing what it cannot trust."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from kcloud.farm.schema import EventRow
from kcloud.store.db import (
    DatabaseUnavailableError,
    SchemaMismatchError,
    default_url,
    head_revision,
    open_database,
    redact,
    resolve_url,
)


def test_default_is_a_sqlite_file_in_the_kcloud_home(kcloud_home, monkeypatch):
    monkeypatch.delenv("KCLOUD_DB_URL", raising=False)
    assert resolve_url(None) == default_url() == f"sqlite:///{kcloud_home / 'kcloud.db'}"


def test_postgres_urls_use_psycopg3_and_the_env_var_is_honoured(monkeypatch):
    assert resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("KCLOUD_DB_URL", "sqlite:////tmp/x.db")
    assert resolve_url(None) == "sqlite:////tmp/x.db"
    assert "secret" not in redact("postgresql+psycopg://u:secret@h/db")


def test_migrates_to_head_and_is_idempotent(db_url):
    first = open_database(db_url)
    assert first.revision == head_revision()
    with first.transaction() as session:
        session.add(EventRow(kind="test.kept", message="survives a reopen"))
    first.close()
    again = open_database(db_url)  # an upgrade of an up-to-date database changes nothing
    assert again.revision == head_revision()
    with again.session() as session:
        assert session.scalars(sa.select(EventRow.kind)).all() == ["test.kept"]
    again.close()


def test_a_transaction_that_fails_writes_nothing(database):
    with pytest.raises(RuntimeError), database.transaction() as session:
        session.add(EventRow(kind="test.partial", message="must not stay"))
        session.flush()
        raise RuntimeError("boom")
    with database.session() as session:
        assert session.scalars(sa.select(EventRow)).all() == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:1/nowhere",
            "cannot connect to database postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        ),
        ("mysql+nosuchdriver://u@h/db", "unsupported database or driver"),
        ("this is not a url", "is not a URL"),
        ("sqlite:////proc/no/such/dir/kcloud.db", "cannot create its folder /proc/no/such/dir"),
    ],
)
def test_a_database_that_cannot_be_used_is_one_clear_error(url, expected):
    with pytest.raises(DatabaseUnavailableError) as caught:
        open_database(url)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_tables_without_migration_history_are_refused(db_url):
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE deployments (id INTEGER PRIMARY KEY, name VARCHAR(10))")
    engine.dispose()
    with pytest.raises(SchemaMismatchError, match="no migration history"):
        open_database(db_url)


def test_a_revision_from_a_newer_kcloud_is_refused(db_url):
    open_database(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    with pytest.raises(SchemaMismatchError, match=r"9999_from_the_future.*does not know"):
        open_database(db_url)


def test_a_schema_changed_by_hand_is_refused_with_the_difference(db_url):
    open_database(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE placement_candidates")
    engine.dispose()
    with pytest.raises(SchemaMismatchError, match="table placement_candidates is missing"):
        open_database(db_url)


def _modes(path) -> dict[str, str]:
    import stat

    files = (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm"))
    return {file.name: oct(stat.S_IMODE(file.stat().st_mode)) for file in files}


def test_the_sqlite_files_are_readable_by_their_owner_only(tmp_path):
    """kcloud.db, -wal and -shm hold key digests, usage and the audit log: 0600, like the key secret,
    whatever the umask; files an older kcloud left with the umask's mode are tightened."""
    import os

    path = tmp_path / "kcloud.db"
    previous = os.umask(0)  # the loosest umask: the mode must come from kcloud, not from it
    try:
        database = open_database(f"sqlite:///{path}")
        with database.transaction() as session:  # a write: SQLite makes the -wal and -shm files
            session.add(EventRow(kind="test.mode", message="private"))
        assert _modes(path) == dict.fromkeys(_modes(path), "0o600")
        for file in tmp_path.iterdir():  # as an older kcloud left them (the -wal and -shm are open)
            file.chmod(0o644)
        reopened = open_database(f"sqlite:///{path}")
        assert _modes(path) == dict.fromkeys(_modes(path), "0o600")
        reopened.close()
        database.close()
    finally:
        os.umask(previous)
