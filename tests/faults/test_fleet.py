"""Fault tests of a fleet: several workers on one PostgreSQL. A worker killed mid-job, a worker
whose database connection is cut, and a worker on its own test host whose network link goes down:
each time the job is taken over once, completes once and is charged once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from harness import RunningServer, start_server
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore

from .network import TcpRelay, TestHost, namespaces_available
from .support import (
    FLUX_DEV_PRICE,
    check_books,
    new_key,
    open_store,
    slow,
    submit,
    wait_running,
    wait_terminal,
    wait_until,
)

LEASE = 3.0
FLEET_ENV = {
    "IMAGEGATE_LEASE_SECONDS": str(LEASE),
    "IMAGEGATE_HEARTBEAT_SECONDS": "0.5",
    "IMAGEGATE_POLL_FALLBACK_SECONDS": "1",
}


@pytest.fixture()
def fleet_server(tiny_models: Path, tmp_path: Path, postgres_url: str) -> Iterator[Any]:
    """A PostgreSQL-backed server; its database emptied first."""
    store = JobStore(postgres_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    store.dispose()
    servers: list[RunningServer] = []

    def start(workers: int) -> RunningServer:
        server = start_server(tmp_path / f"fleet{len(servers)}", config=tiny_models, database_url=postgres_url, workers=workers, extra_env=FLEET_ENV)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@contextmanager
def standalone_worker(server: RunningServer, log: Path, *, database_url: str | None = None, wrap: Callable[[list[str]], list[str]] = lambda a: a) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(server.env)
    if database_url:
        env["IMAGEGATE_DATABASE_URL"] = database_url
    argv = wrap([sys.executable, "-m", "imagegate.cli", "worker", "--config", str(server.config)])
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def owner_of(store: JobStore, job_id: str) -> str | None:
    return store.jobs.get(job_id).lease_owner


def test_two_workers_one_killed_mid_job(fleet_server: Any) -> None:
    server = fleet_server(workers=2)
    store = open_store(server)
    try:
        wait_until(lambda: len(store.workers.list()) == 2, 90, "two registered workers")
        key, key_id = new_key(store, usd=1)
        with server.client() as client:
            victim_job = submit(client, key, slow(50, side=768))
            wait_running(client, key, victim_job)
            other_job = submit(client, key, slow(8))
            owner = store.workers.get(owner_of(store, victim_job))  # type: ignore[arg-type]
            assert owner is not None
            os.kill(owner.pid, signal.SIGKILL)
            done = wait_terminal(store, [victim_job, other_job], timeout=300)
        assert {j.status for j in done.values()} == {JobStatus.COMPLETED}
        assert done[victim_job].attempts == 2  # taken over once
        assert store.keys.get(key_id).balance_micros == 1_000_000 - 2 * FLUX_DEV_PRICE
        check_books(store)
    finally:
        store.dispose()


def takeover(
    server: RunningServer, store: JobStore, first_worker: Callable[[], Any], first_log: Path, cut: Callable[[], None], heal: Callable[[], None], tmp_path: Path
) -> None:
    """A job runs on ``first_worker``; ``cut`` severs that worker from the database; a second worker
    takes the job over once its heartbeat expires and completes it; ``heal`` reconnects the first,
    which must then give up its copy of the job rather than finish it a second time."""
    key, key_id = new_key(store, usd=1)
    with first_worker() as first:
        (registered,) = wait_until(lambda: store.workers.list(), 90, "the first worker to register")
        assert registered.pid == first.pid
        with server.client() as client:
            job_id = submit(client, key, slow(50, side=768))
            wait_running(client, key, job_id)
            assert owner_of(store, job_id) == registered.id
            cut()
            with standalone_worker(server, tmp_path / "second-worker.log"):
                done = wait_terminal(store, [job_id], timeout=300)[job_id]
                assert done.status is JobStatus.COMPLETED and done.attempts == 2
                heal()
                # The first worker comes back, learns its job is someone else's and drops it; its
                # own registry row is re-created.
                wait_until(lambda: any(w.id == registered.id for w in store.workers.list()), 90, "the first worker to re-register")
                # Its hand-back retries back off up to 5 s: wait for its verdict, not a fixed time.
                wait_until(lambda: "another worker owns it now" in first_log.read_text(), 60, "the first worker to drop its copy")
        final = store.jobs.get(job_id)
        assert final.status is JobStatus.COMPLETED and final.attempts == 2
        assert store.keys.get(key_id).balance_micros == 1_000_000 - FLUX_DEV_PRICE
        check_books(store)


def relayed_url(url: str, host: str, port: int) -> str:
    return sa.engine.make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


def test_a_worker_whose_database_connection_is_cut_is_taken_over_once(fleet_server: Any, tmp_path: Path) -> None:
    server = fleet_server(workers=0)
    url = server.env["IMAGEGATE_DATABASE_URL"]
    target = sa.engine.make_url(url)
    relay = TcpRelay((target.host or "127.0.0.1", target.port or 5432))
    store = open_store(server)
    try:
        log = tmp_path / "cut-worker.log"
        takeover(
            server, store,
            lambda: standalone_worker(server, log, database_url=relayed_url(url, "127.0.0.1", relay.port)),
            log, relay.cut, relay.restore, tmp_path,
        )
    finally:
        relay.close()
        store.dispose()


def test_a_worker_on_another_host_whose_link_goes_down_is_taken_over_once(fleet_server: Any, tmp_path: Path) -> None:
    """The first worker runs on its own test host (a network namespace with a veth link to this
    one) and reaches PostgreSQL over that link; the link then goes down mid-job."""
    why_not = namespaces_available()
    if why_not:
        pytest.skip(why_not)
    server = fleet_server(workers=0)
    url = server.env["IMAGEGATE_DATABASE_URL"]
    target = sa.engine.make_url(url)
    store = open_store(server)
    with TestHost() as host:
        relay = TcpRelay((target.host or "127.0.0.1", target.port or 5432), listen=(host.gateway, 0))
        try:
            log = tmp_path / "remote-worker.log"
            takeover(
                server, store,
                lambda: standalone_worker(server, log, database_url=relayed_url(url, host.gateway, relay.port), wrap=host.command),
                log, lambda: host.link(False), lambda: host.link(True), tmp_path,
            )
        finally:
            relay.close()
            store.dispose()


def test_a_worker_started_while_the_database_is_down_waits_for_it(fleet_server: Any, tmp_path: Path) -> None:
    """Started during a database restart, a worker waits instead of exiting (its supervisor would
    only restart it again and again meanwhile), then registers and works once the database is back."""
    server = fleet_server(workers=0)
    url = server.env["IMAGEGATE_DATABASE_URL"]
    target = sa.engine.make_url(url)
    relay = TcpRelay((target.host or "127.0.0.1", target.port or 5432))
    relay.cut()
    store = open_store(server)
    log = tmp_path / "early-worker.log"
    try:
        with standalone_worker(server, log, database_url=relayed_url(url, "127.0.0.1", relay.port)) as worker:
            wait_until(lambda: "database unavailable at start" in log.read_text(), 90, "the worker to find the database down")
            time.sleep(1)
            assert worker.poll() is None, log.read_text()
            relay.restore()
            wait_until(lambda: store.workers.list(), 90, "the worker to register")
            key, _ = new_key(store, usd=1)
            with server.client() as client:
                job_id = submit(client, key, slow(1))
            assert wait_terminal(store, [job_id])[job_id].status is JobStatus.COMPLETED
    finally:
        relay.close()
        store.dispose()
