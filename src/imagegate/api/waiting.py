"""Waiting for jobs on behalf of requests: the synchronous styles and the event streams.

A request that waits asks :class:`JobWaiter` for the job's next change. The store announces every
change of a job (:class:`~imagegate.jobs.wakeups.Topic` ``CHANGED``) as it commits; the waiter
wakes the requests waiting for that job, which read it from the store (the truth). Without a
wake-up a waiter still looks every FALLBACK_SECONDS, so a lost one costs latency, never a result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from imagegate.jobs.store import Job, JobStore
from imagegate.jobs.wakeups import Topic

log = logging.getLogger("imagegate.api.waiting")

FALLBACK_SECONDS = 1.0


class JobWaiter:
    def __init__(self, store: JobStore, *, fallback_seconds: float = FALLBACK_SECONDS) -> None:
        self.store = store
        self.fallback_seconds = fallback_seconds
        # job id -> the events of the requests waiting for it; touched on the event loop only.
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe = None
        self._lock = threading.Lock()

    def _listen(self) -> None:
        with self._lock:
            if self._unsubscribe is None:
                self._loop = asyncio.get_running_loop()
                self._unsubscribe = self.store.wakeups.subscribe(self._on_wakeup)

    def _on_wakeup(self, topic: str, value: str) -> None:
        # The listener thread: hand over to the event loop, and only for jobs someone waits for.
        loop = self._loop
        if loop is None:
            return
        if topic == Topic.CHANGED and value in self._waiting:
            loop.call_soon_threadsafe(self._wake, value)
        elif topic == Topic.ANY:
            loop.call_soon_threadsafe(self._wake, None)

    def _wake(self, job_id: str | None) -> None:
        targets = self._waiting.values() if job_id is None else [self._waiting.get(job_id, set())]
        for events in targets:
            for event in events:
                event.set()

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def next_change(self, job_id: str, seen: Job | None, timeout: float) -> Job | None:
        """The job as soon as it differs from ``seen`` (its status, progress or last update), or
        None when ``timeout`` passes first. With ``seen`` None, the job as it is now."""
        self._listen()
        deadline = time.monotonic() + timeout
        event = asyncio.Event()
        # Registered before the first read: a change committed in between still wakes us.
        self._waiting.setdefault(job_id, set()).add(event)
        try:
            while True:
                try:
                    job: Job | None = await run_in_threadpool(self.store.jobs.get, job_id)
                except OperationalError as exc:
                    # A database restart: the job goes on in its worker, and whoever waits for it
                    # (an event stream, a synchronous request) waits on instead of failing; the
                    # wake-up listener announces everything once the database is back.
                    log.debug("waiting for %s: database unavailable (%s)", job_id, exc.orig)
                    job = None
                if job is not None and (seen is None or job.updated_at != seen.updated_at or job.status is not seen.status):
                    return job
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(event.wait(), min(self.fallback_seconds, left))
                except asyncio.TimeoutError:
                    pass
                event.clear()
        finally:
            events = self._waiting.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[job_id]

    async def until_end(self, job_id: str, timeout: float) -> Job | None:
        """The job once it has ended, or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        seen: Job | None = None
        while True:
            job = await self.next_change(job_id, seen, max(0.0, deadline - time.monotonic()))
            if job is None:
                return None
            if job.status.terminal:
                return job
            if time.monotonic() >= deadline:
                return None
            seen = job
