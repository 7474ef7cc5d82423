"""Waiting for jobs on behalf of requests: the synchronous styles and the event streams.

A request that waits asks :class:`JobWaiter` for the job's next change; the waiter reads the store
(the truth) whenever it may have changed.
"""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool

from imagegate.jobs.store import Job, JobStore

POLL_SECONDS = 0.02


class JobWaiter:
    def __init__(self, store: JobStore, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.store = store
        self.poll_seconds = poll_seconds

    async def next_change(self, job_id: str, seen: Job | None, timeout: float) -> Job | None:
        """The job as soon as it differs from ``seen`` (its status, progress or last update), or
        None when ``timeout`` passes first. With ``seen`` None, the job as it is now."""
        deadline = time.monotonic() + timeout
        while True:
            job = await run_in_threadpool(self.store.jobs.get, job_id)
            if seen is None or job.updated_at != seen.updated_at or job.status is not seen.status:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(self.poll_seconds, left))

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
