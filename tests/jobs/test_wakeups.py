"""Wake-ups: every change is announced with its commit, to other processes too, on SQLite (local
datagram sockets) and PostgreSQL (LISTEN/NOTIFY); nothing is announced for a rolled-back change; a
listener that lost its connection says so (``*``) and hears again."""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagegate.exceptions import InsufficientBalanceError
from imagegate.jobs.store import JobStore, NewJob
from imagegate.jobs.wakeups import Topic


def new_job(key_id: str, price: int = 0, model_id: str = "flux-dev") -> NewJob:
    return NewJob(key_id=key_id, model_id=model_id, protocol="queue", params={"prompt": "x"}, price_micros=price, max_attempts=3)


def collect(store: JobStore) -> "queue.Queue[tuple[str, str]]":
    heard: queue.Queue[tuple[str, str]] = queue.Queue()
    store.wakeups.subscribe(lambda topic, value: heard.put((topic, value)))
    time.sleep(0.3)  # the listener is up (LISTEN issued, socket bound)
    return heard


def wait_for(heard: "queue.Queue[tuple[str, str]]", wanted: tuple[str, str], timeout: float = 5.0) -> list[tuple[str, str]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = heard.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(item)
        if item == wanted:
            return seen
    raise AssertionError(f"{wanted} never came; heard {seen}")


def drain(heard: "queue.Queue[tuple[str, str]]", seconds: float = 0.3) -> list[tuple[str, str]]:
    time.sleep(seconds)
    items = []
    while not heard.empty():
        items.append(heard.get())
    return items


def test_changes_are_announced_with_their_commit(store: JobStore) -> None:
    listener = JobStore(store.url)  # another connection pool, as another process has
    try:
        heard = collect(listener)
        _, key = store.keys.create()
        job, _ = store.jobs.submit(new_job(key.id))
        wait_for(heard, (Topic.QUEUED, "flux-dev"))
        wait_for(heard, (Topic.CHANGED, job.id))
        store.jobs.claim("w")
        wait_for(heard, (Topic.CHANGED, job.id))
        store.jobs.cancel(job.id, key.id)
        wait_for(heard, (Topic.CANCEL, job.id))
        store.keys.set_disabled(key.id)
        wait_for(heard, (Topic.KEY, key.id))
    finally:
        listener.dispose()


def test_a_rolled_back_change_is_not_announced(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=0)
    heard = collect(store)
    with pytest.raises(InsufficientBalanceError):
        store.jobs.submit(new_job(key.id, price=1000))
    assert [m for m in drain(heard) if m[0] in (Topic.QUEUED, Topic.CHANGED)] == []


def test_another_process_is_woken(store: JobStore, tmp_path: Path) -> None:
    """A separate interpreter submits; this one hears it (the path a worker process relies on)."""
    heard = collect(store)
    _, key = store.keys.create()
    script = textwrap.dedent(
        f"""
        from imagegate.jobs.store import JobStore, NewJob
        store = JobStore({store.url!r})
        store.jobs.submit(NewJob(key_id={key.id!r}, model_id="boogu-image", protocol="queue", params={{}}, price_micros=0, max_attempts=3))
        store.dispose()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    wait_for(heard, (Topic.QUEUED, "boogu-image"))


def test_a_listener_that_lost_its_connection_resyncs(store: JobStore) -> None:
    if store.dialect != "postgresql":
        pytest.skip("the local channel has no connection to lose")
    heard = collect(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%%'"
        )
    wait_for(heard, (Topic.ANY, ""), timeout=10)
    _, key = store.keys.create()
    job, _ = store.jobs.submit(new_job(key.id))
    wait_for(heard, (Topic.CHANGED, job.id), timeout=10)
