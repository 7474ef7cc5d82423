"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from imagegate.jobs import schema
from imagegate.jobs.store import JobStore


def test_migrations_match_the_declared_schema(store: JobStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, schema.metadata)
        version = context.get_current_revision()
    assert differences == []
    assert version == "0004"


def test_an_existing_database_upgrades_in_place(tmp_path) -> None:
    """A database made by the first release (0001) gains the new column and keeps its rows."""
    from imagegate.jobs.migrations import upgrade

    store = JobStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store.engine, "0001")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, balance_micros, disabled, webhook_secret, created_at)"
            " VALUES ('key_old', 'old', 'h', 'p', 5, 0, 's', 0)"
        )
    store.migrate()
    assert [k.id for k in store.keys.list()] == ["key_old"]
    with store.engine.connect() as conn:
        columns = [row[1] for row in conn.exec_driver_sql("PRAGMA table_info(jobs)")]
    assert "media_deleted_at" in columns
    store.dispose()
