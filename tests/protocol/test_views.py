"""The protocol views render typed bodies whose JSON is byte for byte what each protocol's
clients have always received: key order, nulls kept, the few optional keys left out."""

from __future__ import annotations

import json

from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job
from imagegate.media.storage import LocalStorage
from imagegate.protocol import views

BASE = "http://h"
# Local storage makes media URLs under the server's base, as served at /media/<key>.
STORAGE = LocalStorage("/nonexistent")


def job(**changes: object) -> Job:
    values: dict[str, object] = dict(
        id="flux-dev_01", key_id="key_1", model_id="flux-dev-i2i", protocol="queue", status=JobStatus.COMPLETED,
        params={}, price_micros=25_000, attempts=1, max_attempts=3, lease_owner=None,
        cancel_requested=False, progress=1.0, progress_detail={"step": 4, "steps": 4}, error=None,
        output={"media": [{"key": "tok/flux-dev_01-0.jpg", "content_type": "image/jpeg"}], "media_type": "image/jpeg",
                "seed": 7, "has_nsfw_concepts": [False]},
        webhook_url=None, webhook_mode=None, webhook_events=None, idempotency_key=None, request_hash=None,
        created_at=1767225600.0, updated_at=1767225601.5, started_at=1767225600.5, completed_at=1767225601.5,
    )
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]


def wire(body: object) -> str:
    # What JSONResponse sends.
    return json.dumps(body.content(), ensure_ascii=False, separators=(",", ":"))  # type: ignore[attr-defined]


def test_queue_status_object() -> None:
    assert wire(views.status_view(job(), BASE, STORAGE)) == (
        '{"request_id":"flux-dev_01","status":"COMPLETED","model_id":"flux-dev","error":null,'
        '"output":{"media_url":["http://h/media/tok/flux-dev_01-0.jpg"],"media_type":"image/jpeg",'
        '"has_nsfw_concepts":[false],"seed":7},"progress":1.0,"created_at":"2026-01-01T00:00:00.000Z",'
        '"updated_at":"2026-01-01T00:00:01.500Z","completed_at":"2026-01-01T00:00:01.500Z"}'
    )
    queued = job(status=JobStatus.QUEUED, output=None, progress=0.0, completed_at=None)
    assert wire(views.queued_view(queued, BASE)) == (
        '{"request_id":"flux-dev_01","status":"QUEUED","polling_url":"http://h/v2/requests/status/flux-dev_01"}'
    )


def test_batch_bodies_leave_out_error_only_when_there_is_none() -> None:
    assert wire(views.batch_status_view(job(), BASE, STORAGE)) == (
        '{"status":"completed","output":"http://h/media/tok/flux-dev_01-0.jpg","completedAt":1767225601500}'
    )
    failed = job(status=JobStatus.FAILED, output=None, error="prompt: bad")
    assert wire(views.batch_status_view(failed, BASE, STORAGE)) == '{"status":"failed","output":null,"completedAt":1767225601500,"error":"prompt: bad"}'
    assert wire(views.webhook_payload(job(webhook_mode="batch"), BASE, STORAGE)) == (
        '{"requestId":"flux-dev_01","status":"completed","output":"http://h/media/tok/flux-dev_01-0.jpg","completedAt":1767225601500}'
    )


def test_dojo_bodies_keep_whole_credits_whole() -> None:
    dojo = job(protocol="dojo", price_micros=10_000)
    assert wire(views.webhook_payload(dojo, BASE, STORAGE)) == (
        '{"jobId":"flux-dev_01","status":"completed","output":{"images":["http://h/media/tok/flux-dev_01-0.jpg"]},'
        '"creditCost":1,"error":null}'
    )
    assert wire(views.dojo_submit_view(dojo, BASE, 1_234_500)) == (
        '{"jobId":"flux-dev_01","status":"pending","statusUrl":"http://h/api/v1/jobs/flux-dev_01","creditCost":1,"creditsRemaining":123.45}'
    )


def test_sync_failures_keep_their_request_id() -> None:
    status, body = views.failure_view(job(status=JobStatus.FAILED, output=None, error="image_url: HTTP 404"))
    assert status == 400 and wire(body) == '{"error":"image_url: HTTP 404","message":"image_url: HTTP 404","request_id":"flux-dev_01"}'


def test_progress_event_reports_loss_only_when_there_is_one() -> None:
    running = job(status=JobStatus.PROCESSING, progress=0.5, progress_detail={"step": 2, "steps": 4})
    assert wire(views.progress_view(running)) == '{"request_id":"flux-dev_01","progress":0.5,"step":2,"steps":4}'
    training = job(status=JobStatus.PROCESSING, progress=0.5, progress_detail={"step": 2, "steps": 4, "loss": 0.25})
    assert wire(views.progress_view(training)).endswith('"steps":4,"loss":0.25}')
