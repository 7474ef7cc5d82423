"""How a job looks in each protocol. Webhook payloads use these same views."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

from imagegate.billing.pricing import to_credits
from imagegate.catalog import MODELS
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job
from imagegate.media.storage import Storage


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def epoch_ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


def public_model_id(job: Job) -> str:
    spec = MODELS.get(job.model_id)
    return spec.request_model_id if spec else job.model_id


def media_urls(job: Job, base_url: str, storage: Storage) -> list[str]:
    if not job.output:
        return []
    return [storage.public_url(m["key"], base_url) for m in job.output.get("media", [])]


def polling_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/v2/requests/status/{job_id}"


def status_view(
    job: Job, base_url: str, storage: Storage, *, inline: list[str] | None = None, queue_position: int | None = None
) -> dict[str, Any]:
    """The universal status object of the queue protocol (and its webhooks). While the job is
    queued, polls also carry ``queue_position`` (as fal's queue does)."""
    output = None
    if job.status is JobStatus.COMPLETED and job.output:
        output = {
            "media_url": inline if inline is not None else media_urls(job, base_url, storage),
            "media_type": job.output.get("media_type"),
            "has_nsfw_concepts": job.output.get("has_nsfw_concepts", []),
            "seed": job.output.get("seed"),
        }
    view = {
        "request_id": job.id,
        "status": job.status.value,
        "model_id": public_model_id(job),
        "error": job.error,
        "output": output,
        "progress": float(job.progress),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "completed_at": iso(job.completed_at),
    }
    if queue_position is not None:
        view["queue_position"] = queue_position
    return view


def data_uris(job: Job, storage: Storage) -> list[str]:
    uris = []
    for m in (job.output or {}).get("media", []):
        data, content_type = storage.get(m["key"])
        uris.append(f"data:{content_type};base64,{base64.b64encode(data).decode()}")
    return uris


BATCH_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.PROCESSING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.ERROR: "error",
    JobStatus.CANCELED: "canceled",
}


def batch_status_view(job: Job, base_url: str, storage: Storage) -> dict[str, Any]:
    urls = media_urls(job, base_url, storage)
    view: dict[str, Any] = {
        "status": BATCH_STATUS[job.status],
        "output": urls[0] if urls and job.status is JobStatus.COMPLETED else None,
        "completedAt": epoch_ms(job.completed_at),
    }
    if job.error:
        view["error"] = job.error
    return view


def batch_queued_view(job: Job, *, webhook: bool) -> dict[str, Any]:
    instructions = '{"requestId": "%s"}' % job.id
    return {
        "requestId": job.id,
        "status": "queued",
        "message": (
            "Request queued. Result will be sent to the provided webhook URL."
            if webhook
            else "Request queued. Poll /checkStatus for the result."
        ),
        "pollingEndpoint": "/checkStatus",
        "pollingInstructions": f"POST to /checkStatus with {instructions}",
    }


DOJO_STATUS = {
    JobStatus.QUEUED: "pending",
    JobStatus.PROCESSING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.ERROR: "failed",
    JobStatus.CANCELED: "failed",
}


def dojo_job_view(job: Job, base_url: str, storage: Storage) -> dict[str, Any]:
    view: dict[str, Any] = {
        "jobId": job.id,
        "status": DOJO_STATUS[job.status],
        "output": {"images": media_urls(job, base_url, storage)} if job.status is JobStatus.COMPLETED else None,
        "creditCost": to_credits(job.price_micros),
        "error": job.error,
    }
    return view


def dojo_submit_view(job: Job, base_url: str, balance_micros: int) -> dict[str, Any]:
    return {
        "jobId": job.id,
        "status": "pending",
        "statusUrl": f"{base_url}/api/v1/jobs/{job.id}",
        "creditCost": to_credits(job.price_micros),
        "creditsRemaining": to_credits(balance_micros),
    }


def webhook_payload(job: Job, base_url: str, storage: Storage) -> dict[str, Any]:
    """A webhook's body: the status response of the protocol the job was submitted through."""
    if job.webhook_mode == "batch":
        # The checkStatus body has no id of its own; one receiver URL may serve many requests.
        return {"requestId": job.id, **batch_status_view(job, base_url, storage)}
    if job.protocol == "dojo":
        return dojo_job_view(job, base_url, storage)
    return status_view(job, base_url, storage)
