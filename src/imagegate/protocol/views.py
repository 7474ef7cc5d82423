"""How a job looks in each protocol, as the typed bodies of :mod:`imagegate.protocol.models`.
Webhook payloads use these same views."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from functools import cache
from typing import Any

from imagegate.billing.money import format_usd
from imagegate.billing.pricing import price_of_defaults, to_credits
from imagegate.catalog import MODELS, ModelSpec
from imagegate.catalog.base import IMAGE_COUNT_FIELDS
from imagegate.config import Settings
from imagegate.jobs.keys import ApiKey, LedgerEntry
from imagegate.jobs.outbox import WebhookAttempt, WebhookEvent
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job, Upload
from imagegate.media.storage import Storage
from imagegate.media.uploads import upload_url
from imagegate.protocol import models as m
from imagegate.protocol import openai


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
    return [storage.public_url(item["key"], base_url) for item in job.output.get("media", [])]


def polling_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/v2/requests/status/{job_id}"


def status_view(
    job: Job, base_url: str, storage: Storage, *, inline: list[str] | None = None, queue_position: int | None = None
) -> m.QueueStatus:
    """The universal status object of the queue protocol (and its webhooks). While the job is
    queued, polls also carry ``queue_position`` (as fal's queue does)."""
    output = None
    if job.status is JobStatus.COMPLETED and job.output:
        output = m.QueueOutput(
            media_url=inline if inline is not None else media_urls(job, base_url, storage),
            media_type=job.output.get("media_type"),
            has_nsfw_concepts=job.output.get("has_nsfw_concepts", []),
            seed=job.output.get("seed"),
        )
    return m.QueueStatus(
        request_id=job.id,
        status=job.status,
        model_id=public_model_id(job),
        error=job.error,
        output=output,
        progress=float(job.progress),
        created_at=iso(job.created_at),
        updated_at=iso(job.updated_at),
        completed_at=iso(job.completed_at),
        queue_position=queue_position,
    )


def queued_view(job: Job, base_url: str) -> m.QueueSubmitted:
    return m.QueueSubmitted(request_id=job.id, status=job.status, polling_url=polling_url(base_url, job.id))


def data_uris(job: Job, storage: Storage) -> list[str]:
    return [f"data:{content_type};base64,{base64.b64encode(data).decode()}" for data, content_type in media_bytes(job, storage)]


def media_bytes(job: Job, storage: Storage) -> list[tuple[bytes, str]]:
    """Every output of a job, read from storage: (bytes, content type)."""
    return [storage.get(item["key"]) for item in (job.output or {}).get("media", [])]


def failure_view(job: Job) -> tuple[int, m.QueueError]:
    """A synchronous request whose job did not complete: the HTTP status and body."""
    if job.status is JobStatus.FAILED:
        return 400, m.QueueError(error=job.error, message=job.error, request_id=job.id)
    if job.status is JobStatus.CANCELED:
        return 409, m.QueueError(error="Canceled", message=job.error, request_id=job.id)
    return 500, m.QueueError(error="Internal Server Error", message=job.error, request_id=job.id)


BATCH_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.PROCESSING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.ERROR: "error",
    JobStatus.CANCELED: "canceled",
}


def batch_status_view(job: Job, base_url: str, storage: Storage) -> m.BatchStatus:
    urls = media_urls(job, base_url, storage)
    return m.BatchStatus(
        status=BATCH_STATUS[job.status],
        output=urls[0] if urls and job.status is JobStatus.COMPLETED else None,
        completedAt=epoch_ms(job.completed_at),
        error=job.error or None,
    )


def batch_queued_view(job: Job, *, webhook: bool) -> m.BatchQueued:
    instructions = '{"requestId": "%s"}' % job.id
    return m.BatchQueued(
        requestId=job.id,
        status="queued",
        message=(
            "Request queued. Result will be sent to the provided webhook URL."
            if webhook
            else "Request queued. Poll /checkStatus for the result."
        ),
        pollingEndpoint="/checkStatus",
        pollingInstructions=f"POST to /checkStatus with {instructions}",
    )


DOJO_STATUS = {
    JobStatus.QUEUED: "pending",
    JobStatus.PROCESSING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.ERROR: "failed",
    JobStatus.CANCELED: "failed",
}


def dojo_job_view(job: Job, base_url: str, storage: Storage) -> m.DojoJob:
    return m.DojoJob(
        jobId=job.id,
        status=DOJO_STATUS[job.status],
        output=m.DojoOutput(images=media_urls(job, base_url, storage)) if job.status is JobStatus.COMPLETED else None,
        creditCost=to_credits(job.price_micros),
        error=job.error,
    )


def dojo_submit_view(job: Job, base_url: str, balance_micros: int) -> m.DojoSubmitted:
    return m.DojoSubmitted(
        jobId=job.id,
        status="pending",
        statusUrl=f"{base_url}/api/v1/jobs/{job.id}",
        creditCost=to_credits(job.price_micros),
        creditsRemaining=to_credits(balance_micros),
    )


def dojo_model_view(spec: ModelSpec, settings: Settings, runtime_micros: int | None = None) -> m.DojoModel:
    price = price_of_defaults(spec, settings, runtime_micros=runtime_micros)
    return m.DojoModel(
        id=spec.id,
        name=spec.title,
        type=spec.task,
        family=spec.family,
        endpoints=[m.DojoEndpoint(path=r.path, protocol=r.protocol.value) for r in spec.routes],
        creditCost=None if price is None else to_credits(price),
    )


def webhook_payload(job: Job, base_url: str, storage: Storage) -> m.WebhookPayload:
    """A webhook's body: the status response of the protocol the job was submitted through."""
    if job.webhook_mode == "batch":
        # The checkStatus body has no id of its own; one receiver URL may serve many requests.
        return m.BatchWebhookPayload(requestId=job.id, **dict(batch_status_view(job, base_url, storage)))
    if job.protocol == "dojo":
        return dojo_job_view(job, base_url, storage)
    return status_view(job, base_url, storage)


# -- account, history, ledger --------------------------------------------------------------------------


def account_view(key: ApiKey) -> m.Account:
    return m.Account(key_id=key.id, name=key.name, balance=format_usd(key.balance_micros), currency="USD")


def charged_micros(job: Job) -> int:
    """What the job costs the key: the hold while it runs, the charge once it ends (ERROR and
    CANCELED give the hold back)."""
    return 0 if job.status in (JobStatus.ERROR, JobStatus.CANCELED) else job.price_micros


def summary_view(job: Job, base_url: str, storage: Storage) -> m.RequestSummary:
    status = status_view(job, base_url, storage)
    urls = status.output.media_url if status.output else []
    return m.RequestSummary(**dict(status), cost=format_usd(charged_micros(job)), thumbnail=urls[0] if urls else None)


def ledger_item_view(entry: LedgerEntry) -> m.LedgerItem:
    return m.LedgerItem(
        id=entry.id,
        kind=entry.kind,
        amount=format_usd(entry.amount_micros),
        request_id=entry.job_id,
        created_at=iso(entry.created_at),
    )


# -- live events -------------------------------------------------------------------------------------------------


def progress_view(job: Job) -> m.ProgressEvent:
    """Progress of a running job; ``loss`` where the engine reports one (the LoRA trainers)."""
    detail = job.progress_detail or {}
    return m.ProgressEvent(
        request_id=job.id,
        progress=float(job.progress),
        step=detail.get("step"),
        steps=detail.get("steps"),
        loss=detail.get("loss"),
    )


# -- webhook diagnostics -------------------------------------------------------------------------------------------


def webhook_event_view(event: WebhookEvent) -> m.WebhookEventView:
    return m.WebhookEventView(
        event_id=event.id,
        event_type=event.event_type,
        state=event.state,
        attempts=event.attempts,
        created_at=iso(event.created_at),
        next_attempt_at=iso(event.next_attempt_at) if event.state == "pending" else None,
        deliver_until=iso(event.deliver_until),
        delivered_at=iso(event.delivered_at),
        last_status_code=event.last_status_code,
        last_error=event.last_error,
    )


def webhook_attempt_view(attempt: WebhookAttempt) -> m.WebhookAttemptView:
    return m.WebhookAttemptView(
        time=iso(attempt.attempted_at),
        event_id=attempt.event_id,
        event_type=attempt.event_type,
        status_code=attempt.status_code,
        error=attempt.error,
        duration_ms=round(attempt.duration_ms, 1),
    )


# -- uploads ----------------------------------------------------------------------------------------------------------


def uploaded_view(upload: Upload, base_url: str) -> m.Uploaded:
    return m.Uploaded(
        url=upload_url(base_url, upload.id),
        content_type=upload.content_type,
        size=upload.size,
        expires_at=iso(upload.expires_at),
    )


# -- the catalog ------------------------------------------------------------------------------------------------------


def price_rule_view(spec: ModelSpec, settings: Settings, runtime_micros: int | None = None) -> m.PriceRule:
    one = price_of_defaults(spec, settings, runtime_micros=runtime_micros)
    two = price_of_defaults(spec, settings, images=2, runtime_micros=runtime_micros)
    counted = any(name in spec.schema.model_fields for name in IMAGE_COUNT_FIELDS)
    if runtime_micros is not None or settings.model(spec.id).price_usd is not None:
        source, per_image, note = "operator", counted, " (set by the operator)"
    elif spec.price is None:
        source, per_image, note = "default", counted, " (the default price)"
    else:
        source, per_image, note = "catalog", counted and one is not None and two == 2 * one, ""
    usd = "an amount that depends on the request" if one is None else "$" + format_usd(one, trim=True)
    description = f"{usd} per {'image' if per_image else 'request'}{note}"
    if source == "catalog" and spec.price_note:
        description = spec.price_note
    return m.PriceRule(
        description=description,
        usd_for_defaults=None if one is None else format_usd(one),
        per_image=per_image,
        varies=source == "catalog" and spec.price_note is not None,
        source=source,
    )


@cache
def _request_schema(model_id: str) -> dict[str, Any]:
    return MODELS[model_id].schema.model_json_schema()


def catalog_entry_view(spec: ModelSpec, settings: Settings, runtime_micros: int | None = None) -> m.CatalogEntry:
    routes = [
        m.CatalogRoute(method=r.method, path=r.path, protocol=r.protocol.value, auth_header=r.auth.value) for r in spec.routes
    ]
    compatible = openai.binding(spec)
    if compatible is not None:
        routes.append(m.CatalogRoute(method="POST", path=compatible.path, protocol=openai.PROTOCOL, auth_header=openai.AUTH.value))
    return m.CatalogEntry(
        id=spec.id,
        model_id=spec.request_model_id,
        title=spec.title,
        family=spec.family,
        task=spec.task,
        routes=routes,
        inputs={name: kind.value for name, kind in spec.inputs.items()},
        price=price_rule_view(spec, settings, runtime_micros),
        request_schema=_request_schema(spec.id),
    )


# -- the OpenAI-compatible images API --------------------------------------------------------------------------------


def openai_error(
    message: str, status_code: int, *, kind: str | None = None, param: str | None = None, code: str | None = None
) -> m.OpenAIError:
    kind = kind or ("server_error" if status_code >= 500 else "invalid_request_error")
    return m.OpenAIError(error=m.OpenAIErrorDetail(message=message, type=kind, param=param, code=code))


def openai_failure_view(job: Job, param: str | None) -> tuple[int, m.OpenAIError]:
    """A job that did not complete, in OpenAI's error shape; ``param`` is the OpenAI field the
    job's error names (an unreadable image, say)."""
    message = job.error or job.status.value
    if job.status is JobStatus.FAILED:
        return 400, openai_error(message, 400, param=param, code="invalid_input")
    if job.status is JobStatus.CANCELED:
        return 409, openai_error(message, 409, code="canceled")
    return 500, openai_error(message, 500)


def openai_images_view(job: Job, base_url: str, *, b64: bool, storage: Storage) -> m.OpenAIImages:
    images = [i for i, item in enumerate((job.output or {}).get("media", [])) if item["content_type"].startswith("image/")]
    if b64:
        stored = media_bytes(job, storage)
        data = [m.OpenAIImage(b64_json=base64.b64encode(stored[i][0]).decode()) for i in images]
    else:
        urls = media_urls(job, base_url, storage)
        data = [m.OpenAIImage(url=urls[i]) for i in images]
    return m.OpenAIImages(created=int(job.created_at), data=data)
