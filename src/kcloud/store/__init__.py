"""kcloud.store: the database every package keeps its state in.

One SQLAlchemy `Base` (`base.py`), the engine, connecting and migrating at start-up (`db.py`),
and both Alembic migration series (`migrations/`). It sits below `farm` and `tenancy`, which
register their tables on `Base` and never reach into each other's schema through it.
"""

from kcloud.store.base import Base, utcnow
from kcloud.store.db import Database, DatabaseError, open_database

__all__ = ["Base", "Database", "DatabaseError", "open_database", "utcnow"]
