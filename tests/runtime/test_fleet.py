"""Workers as a fleet, through the real server: one worker per GPU, the registry, queue positions,
cancels that mean what they say, a poisoned job, and a rate limit shared by API processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from faults.support import (
    FAST,
    FLUX_DEV,
    FLUX_DEV_PRICE,
    SUB,
    check_books,
    new_key,
    open_store,
    slow,
    status,
    submit,
    wait_running,
    wait_terminal,
    wait_until,
)
from harness import RunningServer, start_server
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerInfo


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def workers(store: JobStore, count: int, timeout: float = 90) -> list[WorkerInfo]:
    return wait_until(lambda: (w := store.workers.list()) and len(w) >= count and w, timeout, f"{count} registered worker(s)")


@pytest.fixture()
def server_factory(tiny_models: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[RunningServer] = []

    def start(name: str = "srv", workers: int = 1, **env: Any) -> RunningServer:
        extra = {f"IMAGEGATE_{k.upper()}": str(v) for k, v in env.items()}
        server = start_server(tmp_path / name, config=tiny_models, workers=workers, extra_env=extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_serve_starts_one_worker_per_selected_gpu(server_factory: Any) -> None:
    """`gpus = [0, 2]`: two workers, each given its own GPU before torch is imported. This machine
    has no GPU, so each says so and its engines choose the CPU."""
    server = server_factory(gpus="[0, 2]", heartbeat_seconds=0.5)
    store = open_store(server)
    try:
        registered = workers(store, 2)
        assert sorted(w.gpu for w in registered) == [0, 2]
        assert {w.device for w in registered} == {"cpu"}
        for w in registered:
            assert environ(w.pid)["CUDA_VISIBLE_DEVICES"] == str(w.gpu)
        assert "GPU 2 was asked for" in server.log()
    finally:
        store.dispose()


def test_a_hand_started_worker_is_pinned_registered_and_deregistered(server_factory: Any) -> None:
    server = server_factory(workers=0, heartbeat_seconds=0.5)
    store = open_store(server)
    log = server.log_path.with_name("hand-started-worker.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate.cli", "worker", "--config", str(server.config), "--gpu", "1", "--models", "flux-dev,flux-pro"],
        env=server.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        (info,) = workers(store, 1)
        assert info.gpu == 1 and info.pid == proc.pid and info.models == ["flux-dev", "flux-pro"]
        # No GPU here: the worker says so and its engines run on the CPU.
        assert info.device == "cpu" and "GPU 1 was asked for" in log.read_text()
        key, _ = new_key(store)
        with server.client() as client:
            done = wait_terminal(store, [submit(client, key, FAST)])
        assert [j.status for j in done.values()] == [JobStatus.COMPLETED]
        # The heartbeat reports what it holds: one set of weights serves three endpoints, of which
        # this worker serves two.
        wait_until(lambda: store.workers.get(info.id).loaded == ["flux-dev", "flux-pro"], 10, "loaded models in the registry")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert store.workers.list() == []  # a clean stop deregisters
    finally:
        if proc.poll() is None:
            proc.kill()
        store.dispose()


def test_queued_requests_carry_their_queue_position(server_factory: Any) -> None:
    server = server_factory(workers=0)
    store = open_store(server)
    try:
        key, _ = new_key(store)
        with server.client() as client:
            ids = [submit(client, key, FAST) for _ in range(3)]
            assert [status(client, key, i)["queue_position"] for i in ids] == [0, 1, 2]
            client.put(f"/v2/requests/{ids[0]}/cancel", headers={SUB: key})
            assert [status(client, key, i).get("queue_position") for i in ids] == [None, 0, 1]
    finally:
        store.dispose()


def test_a_cancel_stops_a_running_job_at_its_next_step_and_is_not_charged(server_factory: Any) -> None:
    server = server_factory()
    store = open_store(server)
    try:
        key, key_id = new_key(store, usd=1)
        with server.client() as client:
            job_id = submit(client, key, slow(50, side=768))
            wait_running(client, key, job_id)
            r = client.put(f"/v2/requests/{job_id}/cancel", headers={SUB: key})
            # 200 CANCELED once the worker stopped (it stops at its next step; the answer waits
            # up to 2 s for that), 202 while a slow step is still computing.
            assert r.status_code in (200, 202), r.text
            at_cancel = store.jobs.get(job_id)
            ended = wait_terminal(store, [job_id])[job_id]
        assert ended.status is JobStatus.CANCELED
        # It stopped at its next step: it did not go on to the end, nor a step further.
        assert ended.progress <= at_cancel.progress + 2 / 50 < 1.0, (at_cancel.progress, ended.progress)
        assert store.keys.get(key_id).balance_micros == 1_000_000
        check_books(store)
    finally:
        store.dispose()


def test_cancels_racing_the_end_of_jobs_are_never_charged_once_acknowledged(server_factory: Any) -> None:
    """Cancels sent at random moments around the end of short jobs: each answer is either an
    acknowledgement (CANCELED, or 202 while the worker stops) and then nothing is charged, or the
    job's final status (it had ended) and then it is charged as usual."""
    server = server_factory()
    store = open_store(server)
    rng = random.Random(7)
    try:
        key, key_id = new_key(store, usd=10)
        acknowledged, ended_first = [], []
        with server.client() as client:
            for _ in range(16):
                job_id = submit(client, key, {**FAST, "num_inference_steps": 2})
                time.sleep(rng.uniform(0.0, 0.6))
                r = client.put(f"/v2/requests/{job_id}/cancel", headers={SUB: key})
                assert r.status_code in (200, 202), r.text
                answer = r.json()["status"]
                (ended_first if answer == "COMPLETED" else acknowledged).append(job_id)
        final = wait_terminal(store, acknowledged + ended_first)
        assert all(final[j].status is JobStatus.CANCELED for j in acknowledged)
        assert all(final[j].status is JobStatus.COMPLETED for j in ended_first)
        assert store.keys.get(key_id).balance_micros == 10_000_000 - FLUX_DEV_PRICE * len(ended_first)
        check_books(store)
    finally:
        store.dispose()


def test_a_job_that_kills_its_worker_ends_error_after_max_attempts(server_factory: Any) -> None:
    """Whatever the job does to its worker (here: the worker dies every time it runs it), it ends
    ERROR, not charged, after max_attempts; the queue goes on."""
    server = server_factory(max_attempts=2, heartbeat_seconds=0.5)
    store = open_store(server)
    try:
        key, key_id = new_key(store, usd=1)
        with server.client() as client:
            poison = submit(client, key, slow(50, side=768))
            after = submit(client, key, FAST)
            kills = 0
            deadline = time.monotonic() + 240
            while store.jobs.get(poison).status is not JobStatus.ERROR:
                assert time.monotonic() < deadline, "the poisoned job never ended"
                job = store.jobs.get(poison)
                if job.status is JobStatus.PROCESSING and job.lease_owner:
                    owner = store.workers.get(job.lease_owner)
                    if owner is not None:
                        os.kill(owner.pid, signal.SIGKILL)
                        kills += 1
                        wait_until(lambda: store.jobs.get(poison).lease_owner != job.lease_owner, 60, "the job to be freed")
                time.sleep(0.05)
            ended = store.jobs.get(poison)
            assert kills == 2 and ended.attempts == 2 and "stopped responding 2 time(s)" in (ended.error or "")
            assert wait_terminal(store, [after])[after].status is JobStatus.COMPLETED
        assert store.keys.get(key_id).balance_micros == 1_000_000 - FLUX_DEV_PRICE
        check_books(store)
    finally:
        store.dispose()


def test_the_rate_limit_is_shared_by_api_processes(server_factory: Any) -> None:
    """Two API processes, one bucket per key: `api_processes = 2` does not double a key's rate."""
    server = server_factory(workers=0, api_processes=2, rate_limit_per_second=0.01, rate_limit_burst=4)
    store = open_store(server)
    try:
        key, _ = new_key(store)
        codes = []
        for _ in range(8):
            # A new connection each time, so both processes get requests.
            codes.append(httpx.post(server.base_url + FLUX_DEV, json=FAST, headers={SUB: key}, timeout=30).status_code)
        assert sorted(codes) == [202] * 4 + [429] * 4, codes
        assert len(store.jobs.list()) == 4
    finally:
        store.dispose()
