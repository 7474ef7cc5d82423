"""Webhook diagnostics for the key that owns a request: the delivery log and a redelivery."""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.exceptions import ConflictError, ValidationError
from imagegate.jobs.outbox import OutboxRepository, WebhookEvent
from imagegate.jobs.store import Job
from imagegate.protocol import views
from imagegate.protocol.models import QueueError, WebhookLog, WebhookRedelivery

TAG = "webhooks"

router = APIRouter()


def _outbox(services: Services) -> OutboxRepository:
    return services.store.outbox


def _owned_job(request: Request, request_id: str) -> tuple[Services, Job]:
    services: Services = request.app.state.services
    key = services.auth(request)
    # Another key's request is as unknown as a missing one (404), so ids cannot be probed.
    return services, services.store.jobs.get(request_id, key.id)


@router.get(
    "/v2/requests/{request_id}/webhooks",
    tags=[TAG],
    summary="Webhook events and delivery attempts of a request",
    responses={200: {"model": WebhookLog}, **error_responses(QueueError, {404: "No such request for this key"})},
)
def list_webhooks(request: Request, request_id: str) -> JSONResponse:
    services, job = _owned_job(request, request_id)
    outbox = _outbox(services)
    return answer(
        WebhookLog(
            request_id=job.id,
            webhook_url=job.webhook_url,
            webhook_mode=job.webhook_mode,
            events=[views.webhook_event_view(e) for e in outbox.events_for_job(job.id)],
            attempts=[views.webhook_attempt_view(a) for a in outbox.attempts_for_job(job.id)],
        )
    )


@router.post(
    "/v2/requests/{request_id}/webhooks/redeliver",
    tags=[TAG],
    summary="Send the request's final-status webhook again (same webhook-id)",
    status_code=202,
    responses={
        202: {"model": WebhookRedelivery},
        **error_responses(
            QueueError,
            {
                400: "The request was submitted without a webhook",
                404: "No such request for this key",
                409: "The request has no final-status event yet",
            },
        ),
    },
)
def redeliver_webhook(request: Request, request_id: str) -> JSONResponse:
    services, job = _owned_job(request, request_id)
    event = redeliver_final_event(job, _outbox(services).redeliver)
    return answer(WebhookRedelivery(request_id=job.id, event=views.webhook_event_view(event)), 202)


def redeliver_final_event(job: Job, redeliver: Callable[[str], WebhookEvent | None]) -> WebhookEvent:
    """Queue the job's final-status event again with ``redeliver``, or say why there is none."""
    if not job.webhook_url:
        raise ValidationError("request_id", "was submitted without a webhook; there is nothing to redeliver")
    event = redeliver(job.id)
    if event is None:
        if not job.status.terminal:
            raise ConflictError(f"Request '{job.id}' has not finished yet ({job.status.value}); no final event to redeliver")
        raise ConflictError(f"Request '{job.id}' has no final-status webhook event (its events filter excludes it)")
    return event
