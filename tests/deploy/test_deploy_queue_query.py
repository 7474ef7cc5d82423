"""KEDA's PostgreSQL trigger runs the query in each ScaledObject verbatim: run it against a real
PostgreSQL database, migrated by the migration Job's command, holding jobs in every status written
by imagegate's own store."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from harness import default_env

from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore, NewJob

from .support import flag, of_kind, pod_spec

OUTSTANDING = (JobStatus.QUEUED, JobStatus.PROCESSING)


@pytest.fixture()
def postgres_store(postgres_url: str) -> Iterator[JobStore]:
    """An empty database brought to the current schema by the migration Job's command."""
    store = JobStore(postgres_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    (job,) = [m for m in of_kind("Job") if m.name == "imagegate-migrate"]
    args = pod_spec(job)["containers"][0]["args"]
    env = {**default_env(), "IMAGEGATE_DATABASE_URL": postgres_url}
    done = subprocess.run([sys.executable, "-m", "imagegate.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0
    yield store
    store.dispose()


def scaled_queries() -> dict[str, str]:
    return {m.name: m.doc["spec"]["triggers"][0]["metadata"]["query"] for m in of_kind("ScaledObject")}


def test_each_groups_query_counts_its_outstanding_jobs(postgres_store: JobStore) -> None:
    store = postgres_store
    _, key = store.keys.create(name="keda", balance_micros=10**9)
    # For a few models of every group and one model of none: jobs in each status.
    models = ["flux-dev", "flux-1-schnell", "flux-dev-i2i", "flux-2-dev", "boogu-image-edit", "p-image-upscale", "flux-2-klein-4b"]
    statuses: Counter[tuple[str, JobStatus]] = Counter()
    finals = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR)
    for i, model in enumerate(models):
        count = i % 3 + 2  # one stays queued, one runs, the rest end
        for n in range(count):
            store.jobs.submit(NewJob(key_id=key.id, model_id=model, protocol="queue", params={"prompt": f"{model} {n}"},
                                price_micros=0, max_attempts=3))
        for n in range(count - 1):
            job = store.jobs.claim(f"worker-{model}-{n}", [model])
            assert job is not None and job.model_id == model
            status = JobStatus.PROCESSING if n == 0 else finals[n % 3]
            if status is not JobStatus.PROCESSING:
                error = None if status is JobStatus.COMPLETED else "failed on purpose"
                assert store.jobs.finish(job.id, f"worker-{model}-{n}", status, output={"media": [], "seed": 1}, error=error)
            statuses[(model, status)] += 1
        statuses[(model, JobStatus.QUEUED)] += 1
    canceled, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="flux-dev", protocol="queue", params={"prompt": "c"},
                                      price_micros=0, max_attempts=3))
    store.jobs.cancel(canceled.id, key.id)

    queries = scaled_queries()
    assert len(queries) == 4
    counted_models: set[str] = set()
    for name, query in queries.items():
        with store.engine.connect() as conn:
            (count,) = conn.exec_driver_sql(query).one()
        (deployment,) = [m for m in of_kind("Deployment") if m.name == name]
        group = set((flag(pod_spec(deployment)["containers"][0]["args"], "--models") or "").split(","))
        expected = sum(n for (model, status), n in statuses.items() if model in group and status in OUTSTANDING)
        assert count == expected, f"{name}: KEDA would see {count}, outstanding {expected}"
        counted_models |= group & set(models)
    assert counted_models == set(models)
    assert sum(statuses[(m, s)] for m in models for s in OUTSTANDING) > 0
