"""The control plane's database: where the URL comes from, connecting, and migrating at startup.

Embedded by default: a SQLite file in the kcloud home, so `kcloud up` needs no server. A
PostgreSQL URL (the `[postgres]` extra, psycopg 3) turns the same schema into a shared one.
The schema is only ever created by the Alembic migrations in `kcloud/store/migrations`, run
programmatically (`upgrade head`) when the database is opened. After upgrading, the live schema
is compared with the ORM models: a database that someone else created, that a newer kcloud
migrated, or whose tables were changed by hand is refused with a message naming the difference,
because serving on top of a schema we do not understand risks silent corruption.

Every failure here is a `DatabaseError` with one clear line; callers show it and stop.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from kcloud.home import kcloud_home
from kcloud.store.base import Base

log = logging.getLogger(__name__)

#: Environment variable that names the database when no `--db` is given.
DB_URL_ENV = "KCLOUD_DB_URL"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: A private database in this process's memory: a gateway whose state need not outlive it.
MEMORY_URL = "sqlite://"
#: Seconds to wait for a PostgreSQL server before saying it is unreachable.
CONNECT_TIMEOUT_S = 5
#: The embedded database holds key digests, usage and the audit log: its owner's alone, like the key
#: secret. SQLite gives the `-wal` and `-shm` files it creates the database file's mode.
SQLITE_FILE_MODE = 0o600


class DatabaseError(RuntimeError):
    """The database cannot be used; the message is one line a user can act on."""


class DatabaseUnavailableError(DatabaseError):
    """The URL is malformed, its driver is missing, or the server does not answer."""


class SchemaMismatchError(DatabaseError):
    """The database's schema is not the one kcloud's migrations produce."""


def default_url() -> str:
    """The embedded database: a SQLite file in the kcloud home."""
    return f"sqlite:///{kcloud_home() / 'kcloud.db'}"


def resolve_url(url: str | None = None) -> str:
    """`url`, else `$KCLOUD_DB_URL`, else the embedded SQLite file; PostgreSQL gets psycopg 3.

    `postgresql://` and `postgres://` (as Heroku and libpq write them) mean psycopg 3 here,
    since that is the driver the `[postgres]` extra installs.
    """
    chosen = (url or os.environ.get(DB_URL_ENV) or "").strip() or default_url()
    for prefix in ("postgres://", "postgresql://"):
        if chosen.startswith(prefix):
            return "postgresql+psycopg://" + chosen[len(prefix) :]
    return chosen


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def create_db_engine(url: str) -> Engine:
    """An engine for `url`, with SQLite made safe for the server's threads.

    SQLite: foreign keys on (off by default there), WAL so readers never block the writer,
    and a busy timeout so a second writer waits instead of failing at once.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUnavailableError(
            f"database URL {url!r} is not a URL (expected e.g. sqlite:///path/kcloud.db or "
            f"postgresql://user@host:5432/db)"
        ) from exc
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailableError(
                    f"database URL {redact(parsed)}: cannot create its folder {folder}: {exc.strerror or exc}"
                ) from exc
            if not parsed.database.startswith("file:"):
                private_sqlite_files(Path(parsed.database).expanduser())
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if parsed.database in (None, "", ":memory:"):  # one connection, or each would be its own database
            kwargs["poolclass"] = StaticPool
    elif parsed.get_backend_name() == "postgresql":
        if "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise DatabaseUnavailableError(
            f"database URL {redact(parsed)}: unsupported database or driver "
            f"{parsed.drivername!r} (kcloud supports sqlite and postgresql)"
        ) from exc
    except ModuleNotFoundError as exc:
        hint = (
            " (install the PostgreSQL extra: pip install 'kcloud[postgres]')" if "psycopg" in str(exc) else ""
        )
        raise DatabaseUnavailableError(f"database URL {redact(parsed)}: driver missing: {exc}{hint}") from exc
    except (ArgumentError, TypeError) as exc:
        raise DatabaseUnavailableError(f"database URL {redact(parsed)}: {_first_line(exc)}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def private_sqlite_files(path: Path) -> None:
    """Make the SQLite file (created here if new) and its `-wal` and `-shm` files owner-only (0600).

    Created before SQLite opens it, with the mode given to `open` (a umask can only take bits away),
    so it is never readable by others, not even between creation and a chmod. Files made by an
    older kcloud with the umask's mode are tightened. A file we may not change (another user's) is
    left as it is, with a warning: SQLite then says whether it can be used at all.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("cannot create the database file %s: %s", path, exc.strerror or exc)
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        try:
            if stat.S_IMODE(file.stat().st_mode) & ~SQLITE_FILE_MODE:
                file.chmod(SQLITE_FILE_MODE)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot make %s readable by its owner only: %s", file, exc.strerror or exc)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def alembic_config() -> Config:
    """Alembic's config for the packaged migrations, without an ini file on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _owned_tables() -> set[str]:
    """The tables of the packages this process has imported (each registers its own on `Base`)."""
    return set(Base.metadata.tables)


def migrate(engine: Engine) -> str | None:
    """Bring the schema to the migrations' head, then check it matches the ORM models.

    Returns the revision the database is at. Raises `SchemaMismatchError` when the database
    holds kcloud tables without a migration history, is at a revision this kcloud does not
    know, or differs from the models after upgrading.
    """
    owned = _owned_tables()
    script = ScriptDirectory.from_config(alembic_config())
    where = redact(engine.url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            present = set(inspect(connection).get_table_names())
    except CommandError as exc:
        raise SchemaMismatchError(f"database {where}: unreadable migration history: {exc}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(f"database {where}: {_first_line(exc)}") from exc
    if current is None and present & owned:
        raise SchemaMismatchError(
            f"database {where} has kcloud tables ({', '.join(sorted(present & owned))}) but no "
            f"migration history (no alembic_version): it was not created by kcloud's migrations; "
            f"use an empty database or remove those tables"
        )
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as exc:
            raise SchemaMismatchError(
                f"database {where} is at migration {current!r}, which this kcloud does not know "
                f"(head is {script.get_current_head()!r}); was it migrated by a newer kcloud?"
            ) from exc
    config = alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as exc:
        raise SchemaMismatchError(f"database {where}: migration failed: {exc}") from exc
    except DBAPIError as exc:
        raise SchemaMismatchError(
            f"database {where}: migration to {script.get_current_head()!r} failed: {_first_line(exc)}"
        ) from exc
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = [d for d in _flatten(compare_metadata(context, Base.metadata)) if _matters(d, owned)]
        revision = context.get_current_revision()
    if differences:
        shown = "; ".join(_describe(d) for d in differences[:5])
        more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
        raise SchemaMismatchError(
            f"database {where} (migration {revision!r}) does not match kcloud's schema: {shown}{more}"
        )
    return revision


def _flatten(diffs: list[Any]) -> Iterator[tuple[Any, ...]]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped per column
            yield from diff
        else:
            yield diff


def _matters(diff: tuple[Any, ...], owned: set[str]) -> bool:
    """Differences that break kcloud. Tables kcloud does not own are someone else's business."""
    kind = diff[0]
    if kind == "remove_table":
        return diff[1].name in owned
    return kind in ("add_table", "add_column", "remove_column", "modify_nullable")


def _describe(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    if kind == "add_table":
        return f"table {diff[1].name} is missing"
    if kind == "remove_table":
        return f"table {diff[1].name} is unexpected"
    if kind == "add_column":
        return f"column {diff[2]}.{diff[3].name} is missing"
    if kind == "remove_column":
        return f"column {diff[2]}.{diff[3].name} is unexpected"
    if kind == "modify_nullable":
        return f"column {diff[2]}.{diff[3]} nullability differs"
    return str(diff)


class Database:
    """An engine plus sessions. Writes happen in `transaction()`: all of it or none of it."""

    def __init__(self, engine: Engine, revision: str | None) -> None:
        self.engine = engine
        self.revision = revision
        self.url = engine.url
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: SQLite has one writer at a time; serialising our own writers avoids its lock errors
        #: (a read transaction that later writes cannot upgrade its lock while another writes).
        self._write_lock = threading.RLock() if engine.dialect.name == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        """A session for reading; use `transaction()` to write."""
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any exception."""
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            with self._sessions() as session, session.begin():
                yield session
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r}, revision={self.revision!r})"


def open_database(url: str | None = None, *, migrate_schema: bool = True) -> Database:
    """Connect (failing fast and clearly), migrate to head, check the schema, and return it."""
    resolved = resolve_url(url)
    engine = create_db_engine(resolved)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except (SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise DatabaseUnavailableError(
            f"cannot connect to database {redact(resolved)}: {_first_line(exc)}"
        ) from exc
    try:
        revision = migrate(engine) if migrate_schema else None
    except DatabaseError:
        engine.dispose()
        raise
    log.info("database %s at migration %s", redact(resolved), revision)
    return Database(engine, revision)
