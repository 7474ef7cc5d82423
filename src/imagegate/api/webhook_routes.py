"""Webhook diagnostics for the key that owns a request: the delivery log and a redelivery."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imagegate.api.services import Services
from imagegate.protocol.views import iso
from imagegate.exceptions import ConflictError, ValidationError
from imagegate.jobs.store import Job
from imagegate.jobs.outbox import OutboxRepository, WebhookEvent

TAG = "webhooks"

router = APIRouter()


def _outbox(services: Services) -> OutboxRepository:
    return services.store.outbox


def _owned_job(request: Request, request_id: str) -> tuple[Services, Job]:
    services: Services = request.app.state.services
    key = services.auth(request)
    # Another key's request is as unknown as a missing one (404), so ids cannot be probed.
    return services, services.store.jobs.get(request_id, key.id)


def event_view(event: WebhookEvent) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "event_type": event.event_type,
        "state": event.state,
        "attempts": event.attempts,
        "created_at": iso(event.created_at),
        "next_attempt_at": iso(event.next_attempt_at) if event.state == "pending" else None,
        "deliver_until": iso(event.deliver_until),
        "delivered_at": iso(event.delivered_at),
        "last_status_code": event.last_status_code,
        "last_error": event.last_error,
    }


@router.get(
    "/v2/requests/{request_id}/webhooks",
    tags=[TAG],
    summary="Webhook events and delivery attempts of a request",
    responses={404: {"description": "No such request for this key"}},
)
def list_webhooks(request: Request, request_id: str) -> JSONResponse:
    services, job = _owned_job(request, request_id)
    outbox = _outbox(services)
    events = outbox.events_for_job(job.id)
    attempts = outbox.attempts_for_job(job.id)
    return JSONResponse(
        {
            "request_id": job.id,
            "webhook_url": job.webhook_url,
            "webhook_mode": job.webhook_mode,
            "events": [event_view(e) for e in events],
            "attempts": [
                {
                    "time": iso(a.attempted_at),
                    "event_id": a.event_id,
                    "event_type": a.event_type,
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration_ms": round(a.duration_ms, 1),
                }
                for a in attempts
            ],
        }
    )


@router.post(
    "/v2/requests/{request_id}/webhooks/redeliver",
    tags=[TAG],
    summary="Send the request's final-status webhook again (same webhook-id)",
    status_code=202,
    responses={
        400: {"description": "The request was submitted without a webhook"},
        404: {"description": "No such request for this key"},
        409: {"description": "The request has no final-status event yet"},
    },
)
def redeliver_webhook(request: Request, request_id: str) -> JSONResponse:
    services, job = _owned_job(request, request_id)
    event = redeliver_final_event(job, _outbox(services).redeliver)
    return JSONResponse({"request_id": job.id, "event": event_view(event)}, status_code=202)


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
