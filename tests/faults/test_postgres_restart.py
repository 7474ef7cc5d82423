"""PostgreSQL goes away and comes back while `imagegate serve` runs against it with jobs in flight.

The database is a private PostgreSQL instance made for this module (initdb in a temporary
directory, its own port), so stopping it cannot disturb anything else that uses the machine's
shared cluster. It is stopped in `immediate` mode — every connection cut without a goodbye, WAL
replayed at the next start, as after a crash — and kept down for longer than a job lease.

Through it: the API process and the worker process both survive (same pids), submissions that
failed during the outage succeed when the client retries them with their Idempotency-Key, every
job reaches exactly one final status, the books balance and every final webhook arrives.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate.jobs.status import JobStatus

from .postgres import PrivatePostgres, postgres_bindir
from .support import (
    FAST,
    FLUX_DEV,
    FLUX_DEV_PRICE,
    SUB,
    Receiver,
    balance,
    check_books,
    new_key,
    open_store,
    server_env,
    slow,
    start_server,
    submit,
    wait_running,
    wait_terminal,
    wait_until,
    worker_pids,
)

OUTAGE_SECONDS = 3.0  # longer than the 2 s lease


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    bindir = postgres_bindir()
    missing = "PostgreSQL server binaries (initdb, pg_ctl)" if bindir is None else None
    if missing is None and os.geteuid() == 0 and not shutil.which("runuser"):
        missing = "runuser (to run PostgreSQL as the postgres account)"
    if missing:
        if os.environ.get("IMAGEGATE_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required but {missing} are not available")
        pytest.skip(f"{missing} not available")
    assert bindir is not None
    pg = PrivatePostgres(bindir)
    try:
        pg.init()
        pg.start()
        pg.create_database("imagegate")
        yield pg
    finally:
        pg.destroy()


def test_postgres_restart_with_jobs_in_flight(private_pg: PrivatePostgres, tiny_models: Path, tmp_path: Path) -> None:
    url = private_pg.url("imagegate")
    receiver = Receiver().start()
    server = start_server(tmp_path / "pg-restart", config=tiny_models, database_url=url, extra_env=server_env(lease_seconds=2))
    store = open_store(url)

    def outage(during: Callable[[], None] = lambda: None) -> float:
        private_pg.stop("immediate")
        down = time.monotonic()
        try:
            during()
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
        finally:
            private_pg.start()  # whatever happened above, the database comes back
        return time.monotonic() - down

    try:
        key, key_id = new_key(store, 10)
        before = balance(store, key_id)
        hook = {"X-Webhook-URL": receiver.url}
        with server.client(timeout=30) as client:
            warm = submit(client, key, {**FAST, "prompt": "before the outages"}, **hook)
            assert wait_terminal(store, [warm])[warm].status is JobStatus.COMPLETED
            [worker] = worker_pids(server)

            # Outage 1, the worker idle (polling for work): submits fail meanwhile.
            attempts: list[tuple[str, dict[str, Any], int | None]] = []

            def submit_during() -> None:
                for i in range(3):
                    body = {**FAST, "prompt": f"submitted during the outage {i}"}
                    idem = f"outage-{i}"
                    try:
                        code: int | None = client.post(FLUX_DEV, json=body, headers={SUB: key, "Idempotency-Key": idem, **hook}).status_code
                    except httpx.HTTPError:
                        code = None
                    attempts.append((idem, body, code))

            took = outage(submit_during)
            print(f"\nMEASURE PostgreSQL down for {took:.1f}s (worker idle); submits meanwhile answered {[c for _, _, c in attempts]}")
            assert all(code != 202 for _, _, code in attempts), attempts
            came_back = time.monotonic()
            wait_until(lambda: client.get("/v2/account", headers={SUB: key}).status_code == 200, 30, "the API to read again")
            print(f"MEASURE API reading again {time.monotonic() - came_back:.2f}s after PostgreSQL started")
            # The client retries what failed, with the same Idempotency-Keys.
            retried = [submit(client, key, body, **{"Idempotency-Key": idem, **hook}) for idem, body, _ in attempts]

            # Concurrent first uses of one Idempotency-Key race on PostgreSQL's unique index: one job.
            def racer(_: int) -> str:
                with httpx.Client(base_url=server.base_url, timeout=30) as c:
                    return submit(c, key, {**FAST, "prompt": "raced"}, **{"Idempotency-Key": "race-1", **hook})

            with ThreadPoolExecutor(8) as pool:
                raced = set(pool.map(racer, range(8)))
            assert len(raced) == 1, raced
            retried += list(raced)

            # Outage 2, the worker busy: a job is running (lease renewals fail) and others wait.
            running = submit(client, key, slow(50, side=768), **hook)  # must still run when the test sees it
            queued = [submit(client, key, {**FAST, "prompt": f"queued {i}"}, **hook) for i in range(2)]
            wait_running(client, key, running)
            # Someone follows the running job's event stream through the outage: it stays open.
            streamed: list[str] = []
            following = threading.Event()

            def follow() -> None:
                with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(30, read=120)) as c:
                    with c.stream("GET", f"/v2/requests/{running}/events", headers={SUB: key}) as r:
                        for line in r.iter_lines():
                            if line.startswith(("event:", "data:")):
                                streamed.append(line)
                                following.set()

            follower = threading.Thread(target=follow)
            follower.start()
            assert following.wait(30), "the event stream did not start"
            took = outage()
            came_back = time.monotonic()
            print(f"MEASURE PostgreSQL down for {took:.1f}s (worker busy)")
            everything = [warm, *retried, running, *queued]
            jobs = wait_terminal(store, everything, timeout=240)
            print(f"MEASURE all {len(everything)} jobs ended {time.monotonic() - came_back:.1f}s after PostgreSQL started")
            follower.join(120)
            assert streamed[-2] == "event: done" and '"status":"COMPLETED"' in streamed[-1].replace(" ", ""), streamed[-4:]
        assert {j.status for j in jobs.values()} == {JobStatus.COMPLETED}, {i: (j.status, j.error) for i, j in jobs.items()}
        assert jobs[running].attempts in (1, 2)
        for idem in [a[0] for a in attempts] + ["race-1"]:
            assert len([j for j in store.jobs.list(key_id=key_id) if j.idempotency_key == idem]) == 1
        # Nobody died: the same API process and the same worker process rode both outages out.
        assert server.proc.poll() is None
        assert worker_pids(server) == [worker], server.log()[-3000:]
        receiver.wait_terminal(everything, timeout=60)
        for job_id in everything:
            assert len(receiver.terminal_ids(job_id)) == 1, receiver.for_job(job_id)
        stories = check_books(store)
        assert all(stories[j] == ["hold", "capture"] for j in everything)
        assert before - balance(store, key_id) == FLUX_DEV_PRICE * len(everything)
    finally:
        if not private_pg.running():
            private_pg.start()
        server.stop()
        store.dispose()
        receiver.stop()
