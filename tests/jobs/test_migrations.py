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


def test_a_process_older_than_the_schema_refuses_to_start(tmp_path) -> None:
    import pytest

    from imagegate.exceptions import SchemaAheadError

    store = JobStore(f"sqlite:///{tmp_path / 'ahead.db'}")
    store.migrate()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaAheadError, match="'9999'.*newer imagegate"):
        store.migrate()
    store.dispose()


def test_ten_processes_starting_at_once_migrate_once(postgres_url: str, tmp_path) -> None:
    """Ten `imagegate migrate` processes against an empty database: all succeed, the schema is
    built once (under the advisory lock) and is exactly the declared one."""
    import os
    import subprocess
    import sys

    store = JobStore(postgres_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["IMAGEGATE_DATABASE_URL"] = postgres_url
    procs = [
        subprocess.Popen([sys.executable, "-m", "imagegate.cli", "migrate"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(10)
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, outputs
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, schema.metadata) == []
    store.dispose()
