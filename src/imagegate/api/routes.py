"""Every route: one per catalog entry point, plus the shared status, cancel, account, batch,
dojo and media endpoints."""

from __future__ import annotations

import mimetypes
from typing import Any, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from imagegate.protocol import views
from imagegate.api.services import Services
from imagegate.api.submission import read_json, submit
from imagegate.billing.money import format_usd
from imagegate.billing.pricing import base_price, to_credits
from imagegate.catalog import MODELS, Auth, ModelSpec, Protocol, Route
from imagegate.exceptions import ModelNotFoundError, RequestNotFoundError, ValidationError
from imagegate.media.storage import MEDIA_PATH

STATUS_TAG = "requests"


def _services(request: Request) -> Services:
    return request.app.state.services


def _submit_endpoint(spec: ModelSpec, route: Route) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        return await submit(request, spec, route)

    endpoint.__name__ = f"submit_{spec.id}_{route.protocol.value}".replace("-", "_")
    return endpoint


PROTOCOL_RESPONSES: dict[Protocol, dict[int | str, dict[str, Any]]] = {
    Protocol.QUEUE: {202: {"description": "Queued: {request_id, status, polling_url}"}},
    Protocol.SYNC_OUTPUT: {200: {"description": '{"output": "<url>"}'}},
    Protocol.SYNC_URL: {200: {"description": '{"url": "<url>"}'}},
    Protocol.BATCH: {202: {"description": "{requestId, status, message, pollingEndpoint, pollingInstructions}"}},
    Protocol.DOJO: {200: {"description": "{jobId, status, statusUrl, creditCost, creditsRemaining}"}},
}


def add_model_routes(app: FastAPI, schemas: dict[str, Any]) -> None:
    for spec in MODELS.values():
        for route in spec.routes:
            schema_cls = route.schema or spec.schema
            json_schema = schema_cls.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(json_schema.pop("$defs", {}))
            schemas[schema_cls.__name__] = json_schema
            app.add_api_route(
                route.path,
                _submit_endpoint(spec, route),
                methods=[route.method],
                tags=[spec.family],
                summary=f"{spec.title} ({route.protocol.value})",
                description=f"Model `{spec.request_model_id}`. Authenticate with the `{route.auth.value}` header.",
                responses={**PROTOCOL_RESPONSES[route.protocol], 400: {"description": "Invalid request"}, 401: {"description": "Missing or unknown key"}, 402: {"description": "Insufficient balance"}, 429: {"description": "Rate limited"}},
                openapi_extra={
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_cls.__name__}"}}},
                    }
                },
            )


router = APIRouter()

# How long a cancel of a running request waits for its worker to stop before answering 202.
CANCEL_WAIT_SECONDS = 2.0


@router.get("/v2/requests/status/{request_id}", tags=[STATUS_TAG], summary="Status of a request (queue protocol)")
def request_status(request_id: str, request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request)
    job = services.store.jobs.get(request_id, key.id)
    position = services.store.jobs.queue_position(job)
    return JSONResponse(views.status_view(job, services.base_url, services.storage, queue_position=position))


@router.put(
    "/v2/requests/{request_id}/cancel",
    tags=[STATUS_TAG],
    summary="Cancel a request",
    responses={202: {"description": "Running: the cancel is acknowledged, the job stops at its next step and is not charged"}},
)
async def cancel_request(request_id: str, request: Request) -> JSONResponse:
    """A queued request ends CANCELED at once (200). A running one is flagged: its worker stops
    at its next step, and it is never charged, whatever it was doing when the flag was set; the
    answer waits up to CANCEL_WAIT_SECONDS for it to end (200, CANCELED), else answers 202 with
    the status so far. A request that had already ended answers 200 with its final status."""
    services = _services(request)
    key = await run_in_threadpool(services.auth, request)
    job = await run_in_threadpool(services.store.jobs.cancel, request_id, key.id)
    if not job.status.terminal:
        job = await services.waiter.until_end(job.id, CANCEL_WAIT_SECONDS) or job
    code = 200 if job.status.terminal else 202
    return JSONResponse(views.status_view(job, services.base_url, services.storage), status_code=code)


@router.get("/v2/account", tags=["account"], summary="The key's wallet balance in USD")
def account(request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request)
    fresh = services.store.keys.get(key.id)
    return JSONResponse({"key_id": fresh.id, "name": fresh.name, "balance": format_usd(fresh.balance_micros), "currency": "USD"})


@router.post("/flux-1-schnell/v1/checkStatus", tags=["flux1"], summary="Status of a batch request")
async def check_status(request: Request) -> JSONResponse:
    services = _services(request)
    key = await run_in_threadpool(services.auth, request, Auth.SECRET)
    body = await read_json(request)
    request_id = body.get("requestId") if isinstance(body, dict) else None
    if not isinstance(request_id, str) or not request_id:
        raise ValidationError("requestId", "is required and must be a string")
    job = await run_in_threadpool(services.store.jobs.get, request_id, key.id)
    return JSONResponse(views.batch_status_view(job, services.base_url, services.storage))


@router.get("/api/v1/jobs/{job_id}", tags=["dojo"], summary="Status of a job (dojo protocol)")
def dojo_job(job_id: str, request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request, Auth.BEARER)
    job = services.store.jobs.get(job_id, key.id)
    return JSONResponse(views.dojo_job_view(job, services.base_url, services.storage))


@router.get("/api/v1/models", tags=["dojo"], summary="Models this server serves")
def dojo_models(request: Request) -> JSONResponse:
    services = _services(request)
    services.auth(request, Auth.BEARER)
    models = []
    for spec in MODELS.values():
        if not services.model_enabled(spec.id):
            continue
        models.append(
            {
                "id": spec.id,
                "name": spec.title,
                "type": spec.task,
                "family": spec.family,
                "endpoints": [{"path": r.path, "protocol": r.protocol.value} for r in spec.routes],
                "creditCost": _base_credits(spec, services),
            }
        )
    return JSONResponse({"models": models})


def _base_credits(spec: ModelSpec, services: Services) -> float | None:
    price = base_price(spec, services.settings, services.model_switch(spec.id).price_micros)
    return None if price is None else to_credits(price)


@router.post("/api/v1/models/{model_id}/run", tags=["dojo"], summary="Run a model (dojo protocol)")
def dojo_unknown_model(model_id: str, request: Request) -> JSONResponse:
    # Specific model routes are registered before this one; anything reaching here is unknown
    # to the dojo protocol.
    _services(request).auth(request, Auth.BEARER)
    raise ModelNotFoundError(model_id)


@router.get(MEDIA_PATH + "/{token}/{name}", tags=["media"], summary="A stored output")
def media(token: str, name: str, request: Request) -> Response:
    services = _services(request)
    if "/" in token or ".." in token or "/" in name or ".." in name:
        raise RequestNotFoundError("No such media")
    key = f"{token}/{name}"
    if not services.storage.served_by_api:
        # Object storage serves its own bytes: send the client there (a fresh presigned URL).
        if not services.storage.exists(key):
            raise RequestNotFoundError("No such media")
        return RedirectResponse(services.storage.public_url(key, services.base_url), status_code=307)
    try:
        data, content_type = services.storage.get(key)
    except KeyError as exc:
        raise RequestNotFoundError("No such media") from exc
    content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/healthz", tags=["ops"], summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
