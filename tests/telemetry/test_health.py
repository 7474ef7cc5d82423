"""The readiness probe against a real store (SQLite and PostgreSQL): which workers count as
serving, which models are enabled, the schema revision, the worker's own view, a database that
does not answer, and the one-second cache."""

from __future__ import annotations

import time
from pathlib import Path

from harness import POSTGRES_ADMIN_URL
from imagegate.config import ModelSettings, Settings
from imagegate.jobs.migrations import head_revision, upgrade
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerState
from imagegate.telemetry.health import NO_WORKER, OK, Readiness

from .support import worker_row


def probe(store: JobStore, tmp_path: Path, **settings: object) -> Readiness:
    return Readiness(Settings(data_dir=tmp_path, **settings), store, cache_seconds=0)


def test_a_draining_worker_serves_nothing_but_a_starting_one_does(store: JobStore, tmp_path: Path) -> None:
    store.workers.register(worker_row("w", state=WorkerState.DRAINING))
    assert probe(store, tmp_path).report().checks["workers"] == NO_WORKER
    store.workers.register(worker_row("w", state=WorkerState.STARTING))
    assert probe(store, tmp_path).report().ready


def test_a_worker_whose_models_are_all_disabled_serves_nothing(store: JobStore, tmp_path: Path) -> None:
    store.workers.register(worker_row("w", models=["flux-dev", "flux-pro"]))
    store.models.set_enabled("flux-dev", False)
    readiness = probe(store, tmp_path, models={"flux-pro": ModelSettings(enabled=False)})
    report = readiness.report()
    assert report.checks["workers"] == NO_WORKER
    assert "flux-dev" not in report.unserved_models and "flux-pro" not in report.unserved_models
    store.models.set_enabled("flux-dev", True)
    assert readiness.report().ready


def test_a_schema_behind_the_code_is_named(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(store.engine, "0002")
        report = probe(store, tmp_path).report()
        assert report.checks["database"] == OK
        assert report.checks["schema"] == f"at revision 0002, this code's head is {head_revision()}"
        assert not report.ready
    finally:
        store.dispose()


def test_the_worker_view_reads_its_own_row(store: JobStore, tmp_path: Path) -> None:
    mine = Readiness(Settings(data_dir=tmp_path), store, worker_id="me", cache_seconds=0)
    # Not registered (yet): nothing says it is unhealthy.
    assert mine.report().model_dump(exclude_none=True) == {"status": "ready", "checks": {"database": OK, "schema": OK, "worker": OK}}
    store.workers.register(worker_row("me", state=WorkerState.UNHEALTHY, last_error="claim failed: disk I/O error"))
    assert mine.report().checks["worker"] == "unhealthy: claim failed: disk I/O error"
    store.workers.register(worker_row("me", heartbeat_at=time.time() - 100))
    assert mine.report().checks["worker"].startswith("stalled: no heartbeat for 10")
    # Another worker's trouble is not this one's.
    store.workers.register(worker_row("me"))
    store.workers.register(worker_row("other", state=WorkerState.UNHEALTHY))
    assert mine.report().ready


def test_a_missing_database_file_fails_the_first_check_and_skips_the_rest(sqlite_store: JobStore, tmp_path: Path) -> None:
    sqlite_store.workers.register(worker_row("w"))
    readiness = probe(sqlite_store, tmp_path)
    assert readiness.report().ready
    db = tmp_path / "jobs.db"
    db.rename(tmp_path / "moved.db")
    report = readiness.report()
    assert report.checks["database"] == "OperationalError: unable to open database file"
    assert report.checks["schema"] == report.checks["workers"] == "not checked: an earlier check failed"
    assert not db.exists(), "the probe must not create an empty database in its place"


def test_a_report_is_reused_within_the_cache_period(store: JobStore, tmp_path: Path) -> None:
    readiness = Readiness(Settings(data_dir=tmp_path), store, cache_seconds=0.5)
    assert not readiness.report().ready
    store.workers.register(worker_row("w"))
    assert not readiness.report().ready
    time.sleep(0.6)
    assert readiness.report().ready


def test_a_postgres_database_that_refuses_connections_fails_the_database_check(
    postgres_url: str, tmp_path: Path
) -> None:
    import psycopg

    store = JobStore(postgres_url)
    name = postgres_url.rsplit("/", 1)[1]
    try:
        store.migrate()
        readiness = probe(store, tmp_path)
        assert readiness.report().checks["database"] == OK
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                report = readiness.report()
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert report.checks["database"].startswith("OperationalError: "), report.checks
        assert not report.ready
        assert readiness.report().checks["database"] == OK
    finally:
        store.dispose()
