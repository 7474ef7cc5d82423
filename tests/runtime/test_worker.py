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
