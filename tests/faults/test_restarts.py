"""Stopping and killing `imagegate serve` (SQLite) with work in every state, then starting it again
on the same data directory: no job, ledger row or pending webhook is lost.

One data directory goes through four server lives:

1. SIGTERM while a job runs and two wait (webhook receiver down): the running job finishes
   inside the grace period, the waiting ones stay QUEUED, the final webhook waits in the outbox.
2. Receiver up: the queued jobs run, all final webhooks arrive. Then SIGTERM with a 1 s grace while
   a long job runs: it is handed back to the queue (not ended, not settled), the server exits
   about a second later.
3. Receiver down again; the long job runs a second time; a job canceled meanwhile has its final
   webhook pending; SIGKILL the server. Its worker, orphaned, stops within its grace period
   instead of living on.
4. Receiver up: everything completes, every final webhook arrives exactly once per job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from imagegate.jobs.status import JobStatus

from .support import (
    FAST,
    FLUX_DEV_PRICE,
    SUB,
    Receiver,
    alive,
    balance,
    check_books,
    free_port,
    kill_hard,
    new_key,
    open_store,
    pending_terminal_events,
    server_env,
    slow,
    start_server,
    stop_gracefully,
    submit,
    wait_running,
    wait_terminal,
    wait_until,
    wait_workers,
)


def test_restarts_lose_no_job_ledger_row_or_webhook(tiny_models: Path, tmp_path: Path) -> None:
    data = tmp_path / "restarts"
    receiver = Receiver(free_port())  # down until started

    def start(grace: float) -> Any:
        return start_server(data, config=tiny_models, extra_env=server_env(lease_seconds=2, shutdown_grace_seconds=grace))

    server = start(grace=60)
    store = open_store(server)
    try:
        key, key_id = new_key(store, 10)
        before = balance(store, key_id)
        hook = {"X-Webhook-URL": receiver.url}

        # 1. SIGTERM: the running job finishes, the queued ones stay queued.
        with server.client() as client:
            finished = submit(client, key, slow(40), **hook)  # must outlast the next two submits and the SIGTERM
            wait_running(client, key, finished)
            waiting = [submit(client, key, {**FAST, "prompt": f"waiting {i}"}, **hook) for i in range(2)]
        took = stop_gracefully(server)
        print(f"\nMEASURE SIGTERM with a running job: server exited after {took:.1f}s")
        job = store.jobs.get(finished)
        assert job.status is JobStatus.COMPLETED and job.attempts == 1, job
        for job_id in waiting:
            job = store.jobs.get(job_id)
            assert job.status is JobStatus.QUEUED and job.attempts == 0, job
        assert pending_terminal_events(store, finished)
        check_books(store, all_terminal=False)

        # 2. Restart: the queue drains and the webhooks arrive. SIGTERM past a 1 s grace period.
        receiver.start()
        server = start(grace=1)
        jobs = wait_terminal(store, waiting)
        assert all(j.status is JobStatus.COMPLETED and j.attempts == 1 for j in jobs.values()), jobs
        receiver.wait_terminal([finished, *waiting])
        with server.client() as client:
            # Long enough to outlive a 1 s grace period after its first step, even on a fast CPU.
            long = submit(client, key, slow(50, "a very long exposure", side=768), **hook)  # seconds, even on a quiet machine
            wait_running(client, key, long)
            behind = submit(client, key, {**FAST, "prompt": "behind the long one"}, **hook)
        took = stop_gracefully(server)
        print(f"MEASURE SIGTERM past a 1 s grace: server exited after {took:.1f}s")
        job = store.jobs.get(long)
        assert job.status is JobStatus.QUEUED and job.attempts == 1 and job.lease_owner is None, job
        assert job.progress == 0 and job.completed_at is None, job  # the next attempt starts afresh
        assert store.jobs.get(behind).status is JobStatus.QUEUED
        stories = check_books(store, all_terminal=False)
        assert stories[long] == ["hold"] and stories[behind] == ["hold"]
        assert took < 20, took

        # 3. SIGKILL while the long job runs again, with a final webhook pending.
        receiver.stop()
        server = start(grace=1)
        with server.client() as client:
            wait_running(client, key, long)
            canceled = submit(client, key, {**FAST, "prompt": "canceled"}, **hook)
            r = client.put(f"/v2/requests/{canceled}/cancel", headers={SUB: key})
            assert r.status_code == 200 and r.json()["status"] == "CANCELED", r.text
        wait_until(lambda: pending_terminal_events(store, canceled), 10, "the canceled job's final webhook")
        assert store.jobs.get(long).attempts == 2
        [worker] = wait_workers(server)
        kill_hard(server)
        killed = time.monotonic()
        wait_until(lambda: not alive(worker), 60, "the orphaned worker to exit")
        print(f"MEASURE server SIGKILL: its orphaned worker exited after {time.monotonic() - killed:.1f}s")
        job = store.jobs.get(long)
        # Handed back by the orphan after its grace period (or finished, on a very fast machine).
        assert job.status in (JobStatus.QUEUED, JobStatus.COMPLETED) and job.lease_owner is None, job
        assert store.jobs.get(behind).status is JobStatus.QUEUED
        check_books(store, all_terminal=False)

        # 4. Everything completes; every final webhook arrives, one per job.
        receiver.start()
        server = start(grace=10)
        everything = [finished, *waiting, long, behind, canceled]
        jobs = wait_terminal(store, everything)
        receiver.wait_terminal(everything)
        expected = {j: "COMPLETED" for j in everything} | {canceled: "CANCELED"}
        assert {j: jobs[j].status.value for j in everything} == expected
        for job_id in everything:
            assert len(receiver.terminal_ids(job_id)) == 1, receiver.for_job(job_id)
        stories = check_books(store)
        assert stories[canceled] == ["hold", "release"]
        assert before - balance(store, key_id) == FLUX_DEV_PRICE * (len(everything) - 1)
    finally:
        server.stop()
        receiver.stop()
        store.dispose()
