"""Live events of a request: ``GET /v2/requests/{request_id}/events`` (Server-Sent Events).

For the key that owns the request, whichever protocol it was made through: ``status`` on every
status change (the queue protocol's status object; the first event is the status at connect),
``progress`` while it runs (``step``, ``steps``, and ``loss`` where the engine reports one), then
``done`` with the final status object, and the stream ends. After ``events_keepalive_seconds``
without an event a ``: keep-alive`` comment goes out, so proxies keep the connection open.

The stream waits on :class:`~imagegate.api.waiting.JobWaiter` and holds nothing else: when the
client goes away it stops at once (:class:`~imagegate.api.responses.EventStream`), and the request
itself runs on, untouched.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imagegate.api.responses import SSE_KEEPALIVE, EventStream, error_responses, sse
from imagegate.api.services import Services
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job
from imagegate.protocol import views
from imagegate.protocol.models import QueueError

log = logging.getLogger("imagegate.api.events")

STATUS = "status"
PROGRESS = "progress"
DONE = "done"

router = APIRouter()


async def job_events(services: Services, job: Job) -> AsyncIterator[bytes]:
    base = services.base_url
    if job.status.terminal:
        yield sse(DONE, views.status_view(job, base, services.storage))
        return
    yield sse(STATUS, views.status_view(job, base, services.storage))
    if job.status is JobStatus.PROCESSING and job.progress_detail:
        yield sse(PROGRESS, views.progress_view(job))
    seen = job
    while True:
        fresh = await services.waiter.next_change(job.id, seen, services.settings.events_keepalive_seconds)
        if fresh is None:
            yield SSE_KEEPALIVE
            continue
        if fresh.status.terminal:
            yield sse(DONE, views.status_view(fresh, base, services.storage))
            return
        if fresh.status is not seen.status:
            yield sse(STATUS, views.status_view(fresh, base, services.storage))
            # Its first steps may have been written by the time we read it.
            if fresh.status is JobStatus.PROCESSING and fresh.progress_detail:
                yield sse(PROGRESS, views.progress_view(fresh))
        elif (fresh.progress, fresh.progress_detail) != (seen.progress, seen.progress_detail):
            yield sse(PROGRESS, views.progress_view(fresh))
        seen = fresh


async def _logged(services: Services, job: Job) -> AsyncIterator[bytes]:
    ended = False
    try:
        async for chunk in job_events(services, job):
            yield chunk
        ended = True
    finally:
        log.info("event stream of %s closed (%s)", job.id, "the request ended" if ended else "the client left")


@router.get(
    "/v2/requests/{request_id}/events",
    tags=["requests"],
    summary="Live events of a request (Server-Sent Events)",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": (
                "`event: status` (data: QueueStatus) on every status change, `event: progress` (data: ProgressEvent) "
                "while it runs, `event: done` (data: QueueStatus) at the end; `: keep-alive` comments in between"
            ),
        },
        **error_responses(QueueError, {401: "Missing or unknown key", 404: "No such request for this key"}),
    },
)
async def request_events(request_id: str, request: Request) -> EventStream:
    services: Services = request.app.state.services
    key = await run_in_threadpool(services.auth, request)
    job = await run_in_threadpool(services.store.jobs.get, request_id, key.id)
    return EventStream(_logged(services, job))
