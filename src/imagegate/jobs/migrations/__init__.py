"""Alembic migrations for the job store; ``upgrade(engine)`` runs them in-process.

Many processes may start at once against one database (a fleet rolling out, ten API replicas): the
upgrade runs under a lock — a PostgreSQL advisory lock, a file lock beside a SQLite database — so
it happens once, and the others find the schema already at head. A process whose code is older
than the database's schema (a newer release migrated it) refuses to start, with a message naming
both revisions, rather than writing rows the newer schema does not expect.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from imagegate.exceptions import SchemaAheadError

HERE = Path(__file__).parent
# pg_advisory_lock's key: any constant 64-bit number, the same in every imagegate process.
ADVISORY_LOCK_KEY = 0x1A6E6A7E


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def _revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn)


def check_not_ahead(engine: Engine) -> None:
    current = _revision_of(engine)
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revision(current)
    except Exception as exc:  # alembic raises CommandError/ResolutionError for an unknown id
        raise SchemaAheadError(
            f"the database schema is at revision {current!r}, which this imagegate (schema head "
            f"{head_revision()!r}) does not know: a newer imagegate migrated it. Upgrade this "
            "process's imagegate to the release that migrated the database."
        ) from exc


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(database + ".migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (head by default), once, however many processes ask."""
    check_not_ahead(engine)
    if revision == "head" and _revision_of(engine) == head_revision():
        return  # the common case of a restart: no lock, no Alembic run
    with _migration_lock(engine):
        check_not_ahead(engine)
        command.upgrade(alembic_config(engine), revision)
