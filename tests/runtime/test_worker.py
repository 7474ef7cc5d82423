"""The worker's own loop: a failure outside any job makes it unhealthy (registry), backs off and
recovers; it never crashes the process or loops silently. A fault is injected at the store seam:
the claim raises, as the unset-URL bug once made every worker's loop raise."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerState
from imagegate.runtime import worker as worker_module
from imagegate.runtime.worker import Worker


def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_failing_loop_reports_unhealthy_backs_off_and_recovers(sqlite_store: JobStore, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(worker_module, "LOOP_RETRY_FIRST_SECONDS", 0.2)
    settings = Settings(data_dir=tmp_path, heartbeat_seconds=0.2, poll_fallback_seconds=0.1)
    worker = Worker(settings, sqlite_store, worker_id="w-faulty")
    real_claim = sqlite_store.jobs.has_queued
    failures = {"left": 3}

    def failing_check(*args: Any, **kwargs: Any) -> bool:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("the loop broke")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(sqlite_store.jobs, "has_queued", failing_check)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        unhealthy = until(
            lambda: (w := sqlite_store.workers.get("w-faulty")) and w.state is WorkerState.UNHEALTHY and w,
            10, "the registry to say unhealthy",
        )
        assert unhealthy.last_error == "RuntimeError: the loop broke"
        healthy = until(
            lambda: (w := sqlite_store.workers.get("w-faulty")) and w.state is WorkerState.IDLE and w, 15, "recovery"
        )
        assert healthy.last_error is None and failures["left"] == 0
        assert thread.is_alive()
    finally:
        worker.request_stop()
        thread.join(20)
    assert not thread.is_alive()
    assert sqlite_store.workers.get("w-faulty") is None  # deregistered on the clean stop


def test_a_claim_whose_answer_was_lost_is_handed_back_and_run(sqlite_store: JobStore, tmp_path: Path, monkeypatch: Any, tiny_models: Path) -> None:
    """The claim commits and then the connection dies before its answer arrives (injected at the
    store seam: the real claim runs, then OperationalError). The job is this worker's, PROCESSING,
    and no code runs it; the worker keeps heartbeating, so the stalled sweep would never free it.
    Back from the outage, the worker hands it back and then runs it."""
    from sqlalchemy.exc import OperationalError

    from imagegate.catalog import MODELS
    from imagegate.catalog.base import validate_body
    from imagegate.config import load_settings
    from imagegate.jobs.queue import NewJob
    from imagegate.jobs.status import JobStatus

    monkeypatch.setattr(worker_module, "DB_RETRY_FIRST_SECONDS", 0.05)
    settings = load_settings(tiny_models, data_dir=tmp_path, poll_fallback_seconds=0.1, device="cpu")
    _, key = sqlite_store.keys.create(balance_micros=1_000_000)
    worker = Worker(settings, sqlite_store, worker_id="w-lost-answer")
    real_claim = sqlite_store.jobs.claim
    lost = {"left": 1}

    def claim_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        job = real_claim(*args, **kwargs)
        if job is not None and lost["left"]:
            lost["left"] -= 1
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection reset by peer"))
        return job

    monkeypatch.setattr(sqlite_store.jobs, "claim", claim_then_lose_the_answer)
    spec = MODELS["flux-dev"]
    params = validate_body(spec.schema, {"prompt": "a harbour", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "enable_safety_checker": False})
    job, _ = sqlite_store.jobs.submit(NewJob(key_id=key.id, model_id=spec.id, protocol="queue", params=params, price_micros=25_000, max_attempts=3))
    job_id = job.id
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        done = until(lambda: (j := sqlite_store.jobs.get(job_id)).status.terminal and j, 120, "the job to end")
        assert done.status is JobStatus.COMPLETED and done.attempts == 2 and lost["left"] == 0
    finally:
        worker.request_stop()
        thread.join(30)
