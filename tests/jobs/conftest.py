from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from imagegate.jobs.store import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """The same tests against the embedded SQLite default and a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        base = request.getfixturevalue("postgres_url")
        url = base
    s = JobStore(url)
    if request.param == "postgresql":
        with s.engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    s.migrate()
    yield s
    s.dispose()
