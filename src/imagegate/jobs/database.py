"""The connection to the database: engines, transactions and the hot single-row read path.

Every repository of the store runs its statements through one :class:`Database`. A repository
method that writes takes an optional ``conn``: given one, it runs inside the caller's
transaction (so a hold and its job, or a status change and its events, commit together);
without one, it opens and commits its own.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


_AFTER_COMMIT = "imagegate_after_commit"

# A link that dies silently (a cable, a partition: no FIN, no RST) must not hang a worker's
# heartbeat or a request forever: unacknowledged writes fail after tcp_user_timeout, and idle
# connections are probed, so the connection errors and the usual retry/back-off takes over.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


class Database:
    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.dialect = sa.engine.make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, connect_args={"check_same_thread": False, "timeout": 60}
            )
            _configure_sqlite(self.engine)
            # SQLite's connections already run in autocommit (the begin hook opens transactions).
            self._single_reads = self.engine
        else:
            # Transactions check their connection before use (pre-ping): a write that meets a
            # connection the server dropped (a restart) must not fail or, worse, be retried blind.
            self.engine = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS
            )
            # Single reads, the hot path of status polls, skip that extra round trip: a SELECT is
            # safe to repeat, so read_first retries once on a dropped connection instead.
            self._single_reads = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, isolation_level="AUTOCOMMIT", connect_args=POSTGRES_CONNECT_ARGS
            )

    def engines(self) -> list[Engine]:
        """Every engine this database sends statements through."""
        return [self.engine] if self._single_reads is self.engine else [self.engine, self._single_reads]

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgresql"

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from imagegate.jobs.migrations import upgrade

        upgrade(self.engine)

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated)."""
        from imagegate.jobs.migrations import current_revision

        with self.read() as conn:
            return current_revision(conn)

    def ping(self) -> None:
        """Open a new connection and read through it; raises if the database does not answer.

        Not through the pool: a pooled SQLite connection keeps answering from a file that was
        deleted or moved away (every other process would open another), so SQLite is opened
        afresh, read-write without creating (a missing file is an error, not a new empty
        database). PostgreSQL's pool checks its connection before use, which is a round trip.
        """
        path = sa.engine.make_url(self.url).database if self.dialect == "sqlite" else None
        if path and path != ":memory:":
            uri = Path(path).resolve().as_uri() + "?mode=rw"
            with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._single_reads is not self.engine:
            self._single_reads.dispose()

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A write transaction: the caller's, when it passes one, or a new one committed on exit
        (then the callbacks registered with :meth:`after_commit` run)."""
        if conn is not None:
            yield conn
            return
        with self.engine.connect() as own:
            try:
                with own.begin():
                    yield own
            finally:
                # Committed: run them below; rolled back: drop them with the change.
                callbacks = own.info.pop(_AFTER_COMMIT, [])
        for callback in callbacks:
            callback()

    @staticmethod
    def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction that ``conn`` is in commits (dropped on rollback).
        Only transactions opened by :meth:`transaction` run them."""
        conn.info.setdefault(_AFTER_COMMIT, []).append(callback)

    @contextmanager
    def read(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A read-only transaction; on SQLite it must not take the write lock (BEGIN, not IMMEDIATE)."""
        if conn is not None:
            yield conn
            return
        own = self.engine.connect()
        own.info["write"] = False
        tx = own.begin()
        try:
            yield own
        finally:
            try:
                tx.rollback()
            finally:
                own.info["write"] = True
                own.close()

    def read_first(self, statement: Any, params: dict[str, Any]) -> Any:
        """One SELECT, one row: the hot read path of polls and key lookups. A single statement is
        atomic on its own, so it runs outside a transaction (no BEGIN and ROLLBACK round trips)."""
        try:
            return self._single_read(statement, params)
        except sa.exc.DBAPIError as exc:
            # A connection the server dropped invalidates the whole pool; the retry connects
            # afresh. A server that is really down fails the retry too (the API answers 503).
            if not exc.connection_invalidated:
                raise
        return self._single_read(statement, params)

    def _single_read(self, statement: Any, params: dict[str, Any]) -> Any:
        with self._single_reads.connect() as conn:
            conn.info["single_read"] = True
            try:
                return conn.execute(statement, params).first()
            finally:
                if not conn.invalidated:  # an invalidated connection has no record left to reset
                    conn.info["single_read"] = False


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's implicit transactions would start as DEFERRED and fail to upgrade to a
        # write lock under concurrency (SQLITE_BUSY without waiting); take the write lock
        # up front instead, and let WAL keep readers unblocked.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.info.get("single_read"):
            return  # one SELECT is atomic on its own: no transaction to open or roll back
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write", True) else "BEGIN")
