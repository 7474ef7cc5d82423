"""Output media retention on SQLite and PostgreSQL: what expires, what stays, storage failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import update

from imagegate.config import Settings
from imagegate.exceptions import StorageError
from imagegate.jobs import schema
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore, NewJob
from imagegate.runtime.housekeeping import start_housekeeping_thread
from imagegate.media.retention import purge_expired_media
from imagegate.media.storage import LocalStorage, S3Storage, Storage

from .support import S3Server

DAY = 86400.0


def complete(store: JobStore, storage: Storage, key_id: str, name: str, files: int = 2) -> tuple[str, list[str]]:
    job, _ = store.jobs.submit(NewJob(key_id=key_id, model_id="flux-dev", protocol="queue", params={"prompt": name},
                                 price_micros=0, max_attempts=3))
    claimed = store.jobs.claim("worker-1")
    assert claimed is not None and claimed.id == job.id
    keys = [f"tok{name}/{job.id}-{i}.png" for i in range(files)]
    for key in keys:
        storage.put(key, b"\x89PNG fake", "image/png")
    media = [{"key": k, "content_type": "image/png"} for k in keys]
    assert store.jobs.finish(job.id, "worker-1", JobStatus.COMPLETED, output={"media": media, "seed": 1}) is not None
    return job.id, keys


class FlakyStorage(LocalStorage):
    def __init__(self, root: Path, failing: set[str]) -> None:
        super().__init__(root)
        self.failing = failing

    def delete(self, key: str) -> None:
        if key in self.failing:
            raise StorageError(f"could not delete {key}: simulated outage")
        super().delete(key)


def test_media_expire_after_their_retention(store: JobStore, tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "media", set())
    _, key = store.keys.create(name="retention")
    old_id, old_keys = complete(store, storage, key.id, "a")
    other_id, other_keys = complete(store, storage, key.id, "b", files=1)
    failed, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="flux-dev", protocol="queue", params={"prompt": "c"},
                                    price_micros=0, max_attempts=3))
    assert store.jobs.claim("worker-1") is not None
    store.jobs.finish(failed.id, "worker-1", JobStatus.FAILED, error="bad input")
    done_at = time.time()

    assert purge_expired_media(store, storage, 0, now=done_at + 365 * DAY) == 0  # 0 keeps forever
    assert purge_expired_media(store, storage, 2, now=done_at + 2 * DAY - 60) == 0
    assert all(storage.exists(k) for k in old_keys + other_keys)

    # A storage outage on one key: that job stays pending for the next sweep, the other goes.
    storage.failing = {other_keys[0]}
    assert purge_expired_media(store, storage, 2, now=done_at + 2 * DAY + 60) == 1
    assert not any(storage.exists(k) for k in old_keys) and storage.exists(other_keys[0])
    assert [job_id for job_id, _ in store.jobs.with_expired_media(done_at + 2 * DAY + 60)] == [other_id]
    storage.failing = set()
    assert purge_expired_media(store, storage, 2, now=done_at + 2 * DAY + 120) == 1
    assert not storage.exists(other_keys[0])
    assert store.jobs.with_expired_media(done_at + 10 * DAY) == []
    # The records stay: status, output description and the failed job are untouched.
    assert store.jobs.get(old_id).status is JobStatus.COMPLETED
    assert store.jobs.get(old_id).output["media"][0]["key"] == old_keys[0]
    assert store.jobs.get(failed.id).status is JobStatus.FAILED


def test_serve_sweeps_in_the_background(sqlite_store: JobStore, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", media_retention_days=1)
    storage = LocalStorage(tmp_path / "data" / "media")
    _, key = sqlite_store.keys.create(name="retention")
    job_id, keys = complete(sqlite_store, storage, key.id, "d")
    with sqlite_store.engine.begin() as conn:  # completed two days ago
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(completed_at=time.time() - 2 * DAY))
    thread, stop = start_housekeeping_thread(sqlite_store, settings)
    try:
        deadline = time.monotonic() + 10
        while any(storage.exists(k) for k in keys):
            assert time.monotonic() < deadline, "the sweep never ran"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_expired_media_are_deleted_from_s3(sqlite_store: JobStore, s3_server: S3Server, s3_prefix: str) -> None:
    import httpx

    storage = S3Storage(
        s3_server.bucket, s3_prefix, s3_server.endpoint_url, "us-east-1", s3_server.access_key, s3_server.secret_key
    )
    _, key = sqlite_store.keys.create(name="retention")
    job_id, keys = complete(sqlite_store, storage, key.id, "s3")
    urls = [storage.public_url(k, "") for k in keys]
    assert all(httpx.get(u).status_code == 200 for u in urls)

    assert purge_expired_media(sqlite_store, storage, 1, now=time.time() + 2 * DAY) == 1
    assert not any(storage.exists(k) for k in keys)
    # URLs handed out before the sweep, still within their lifetime, now find nothing.
    assert [httpx.get(u).status_code for u in urls] == [404, 404]
    assert sqlite_store.jobs.with_expired_media(time.time() + 10 * DAY) == []
    assert sqlite_store.jobs.get(job_id).status is JobStatus.COMPLETED


@pytest.mark.parametrize("days", [-1])
def test_retention_days_cannot_be_negative(days: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="media_retention_days"):
        Settings(data_dir=tmp_path, media_retention_days=days)
