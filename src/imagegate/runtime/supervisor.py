"""Keeps the embedded worker processes of ``imagegate serve`` alive.

Workers are separate processes so a model crash (or an out-of-memory kill) never takes the API
down; a worker that dies is started again after a short back-off, and its job is re-claimed
once its lease expires.

The reverse holds too: a worker whose server is gone (killed with SIGKILL, so it never got to
stop its workers) stops as if it had been sent SIGTERM — it finishes its running job within the
grace period and exits — instead of living on as an orphan that holds a model (and the GPU)
beside the workers of the restarted server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from imagegate.config import Settings
from imagegate.jobs.ids import new_token
from imagegate.jobs.store import JobStore
from imagegate.runtime.devices import VISIBLE_DEVICES_ENV, worker_gpus

log = logging.getLogger("imagegate.supervisor")

RESTART_BACKOFF_SECONDS = (0.5, 1, 2, 5, 10, 30)
# A worker that ran this long before dying was healthy: its next restart starts the back-off over.
HEALTHY_RUN_SECONDS = 60.0
PARENT_CHECK_SECONDS = 1.0


def _stop_when_orphaned(parent_pid: int) -> None:
    """SIGTERM this process once its parent (the server) has exited.

    A dead parent's children are re-parented (to init or a subreaper), so the parent pid changes;
    the worker's SIGTERM handler then stops it gracefully. Before the handler is installed the
    default action applies and the process simply ends (it holds no job then).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("the server process %s is gone; stopping worker process %s", parent_pid, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="imagegate-parent-watch", daemon=True).start()


# The server's resolved settings, handed to each worker process it starts.
SETTINGS_ENV = "IMAGEGATE_WORKER_SETTINGS_JSON"


def worker_command(worker_id: str, gpu: int | None, model_ids: list[str] | None, parent_pid: int) -> list[str]:
    """How the supervisor starts a worker: a fresh interpreter running :func:`main`."""
    return [
        sys.executable, "-m", "imagegate.runtime.supervisor", worker_id,
        "" if gpu is None else str(gpu), ",".join(model_ids or []), str(parent_pid),
    ]


def main(argv: list[str]) -> None:
    """A worker process started by the supervisor (see :func:`worker_command`)."""
    worker_id, gpu, models, parent_pid = argv
    from imagegate.runtime.worker import run_worker

    _stop_when_orphaned(int(parent_pid))
    settings = Settings.model_validate_json(os.environ.pop(SETTINGS_ENV))
    run_worker(settings, models.split(",") if models else None, worker_id=worker_id, gpu=int(gpu) if gpu else None)


@dataclass(frozen=True)
class WorkerSlot:
    """What one embedded worker process is given: its GPU (None: the CPU)."""

    gpu: int | None


def worker_slots(settings: Settings) -> list[WorkerSlot]:
    """One worker per selected GPU; without GPUs, ``embedded_workers`` CPU workers."""
    if settings.embedded_workers <= 0:
        return []
    gpus = worker_gpus(settings.gpus)
    if gpus:
        return [WorkerSlot(gpu) for gpu in gpus]
    return [WorkerSlot(None) for _ in range(settings.embedded_workers)]


class WorkerSupervisor:
    def __init__(
        self,
        settings: Settings,
        slots: list[WorkerSlot],
        model_ids: list[str] | None = None,
        *,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.model_ids = model_ids
        # With the store, a worker that dies leaves the registry at once and its job is queued
        # again right away, instead of when its heartbeat expires.
        self.store = store
        count = len(slots)
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._ids: list[str] = [""] * count
        self._failures = [0] * count
        self._started_at = [0.0] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    @property
    def count(self) -> int:
        return len(self.slots)

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        self._thread.start()

    def _spawn(self, i: int) -> None:
        slot = self.slots[i]
        worker_id = f"{socket.gethostname()}-w{i}-{new_token(4)}"
        env = dict(os.environ)
        env[SETTINGS_ENV] = self.settings.model_dump_json()
        if slot.gpu is not None:
            # In the environment the process starts with: set before torch is ever imported there.
            env[VISIBLE_DEVICES_ENV] = str(slot.gpu)
        proc = subprocess.Popen(worker_command(worker_id, slot.gpu, self.model_ids, os.getpid()), env=env)
        self._procs[i] = proc
        self._ids[i] = worker_id
        self._started_at[i] = time.monotonic()
        where = f"GPU {slot.gpu}" if slot.gpu is not None else "the CPU"
        log.info("started worker process %s (pid %s, %s, id %s)", i, proc.pid, where, worker_id)

    def _forget(self, i: int) -> None:
        if self.store is None:
            return
        try:
            self.store.workers.deregister(self._ids[i])
            freed = self.store.jobs.recover_stalled(self.settings.lease_seconds)
        except Exception as exc:  # the database may be down too; the sweep will catch up
            log.warning("could not release the jobs of worker process %s yet: %s", i, exc)
            return
        for job in freed:
            log.info("job %s of the dead worker: %s", job.id, job.status.value)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None or self._stop.is_set():
                    continue
                if time.monotonic() - self._started_at[i] > HEALTHY_RUN_SECONDS:
                    self._failures[i] = 0
                delay = RESTART_BACKOFF_SECONDS[min(self._failures[i], len(RESTART_BACKOFF_SECONDS) - 1)]
                log.warning("worker process %s exited with %s; restarting in %ss", i, proc.returncode, delay)
                self._forget(i)
                self._failures[i] += 1
                if self._stop.wait(delay):
                    return
                self._spawn(i)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def stop(self) -> None:
        """SIGTERM every worker (they finish the running job within the grace period), then wait."""
        self._stop.set()
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


if __name__ == "__main__":
    main(sys.argv[1:])
