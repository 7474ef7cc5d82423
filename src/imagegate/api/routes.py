"""Every route: one per catalog entry point, plus the shared status, cancel, account, batch,
dojo and media endpoints."""

from __future__ import annotations

import mimetypes
from typing import Any, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.api.submission import read_json, submit
from imagegate.catalog import MODELS, Auth, ModelSpec, Protocol, Route
from imagegate.exceptions import ModelNotFoundError, RequestNotFoundError, ValidationError
from imagegate.media.storage import MEDIA_PATH
from imagegate.protocol import models, views

STATUS_TAG = "requests"


def _services(request: Request) -> Services:
    return request.app.state.services


def _submit_endpoint(spec: ModelSpec, route: Route) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        return await submit(request, spec, route)

    endpoint.__name__ = f"submit_{spec.id}_{route.protocol.value}".replace("-", "_")
    return endpoint


PROTOCOL_RESPONSES: dict[Protocol, dict[int | str, dict[str, Any]]] = {
    Protocol.QUEUE: {
        202: {"model": models.QueueSubmitted, "description": "Queued"},
        200: {"model": models.QueueStatus, "description": "`sync_mode: true`: the finished request, media as data: URIs"},
    },
    Protocol.SYNC_OUTPUT: {200: {"model": models.SyncOutput, "description": "The finished image's URL"}},
    Protocol.SYNC_URL: {200: {"model": models.SyncUrl, "description": "The finished image's URL"}},
    Protocol.BATCH: {
        202: {"model": models.BatchQueued, "description": "Queued (with a webhook_url, or not finished in time)"},
        200: {"model": models.BatchStatus, "description": "Finished within batch_wait_seconds"},
    },
    Protocol.DOJO: {200: {"model": models.DojoSubmitted, "description": "Queued"}},
}

# The errors every submitting route can answer, in its protocol's error shape.
SUBMIT_ERRORS = {
    400: "Invalid request",
    401: "Missing or unknown key",
    402: "Insufficient balance",
    403: "Key disabled",
    429: "Rate limited",
}
SYNC_ERRORS = {409: "The request was canceled", 500: "The request ended ERROR", 504: "Not finished within sync_timeout_seconds"}


def _route_responses(route: Route, schema: type[Any]) -> dict[int | str, dict[str, Any]]:
    answers = dict(PROTOCOL_RESPONSES[route.protocol])
    errors = dict(SUBMIT_ERRORS)
    waits = route.protocol in (Protocol.SYNC_OUTPUT, Protocol.SYNC_URL) or "sync_mode" in schema.model_fields
    if waits:
        errors.update(SYNC_ERRORS)
    elif route.protocol is Protocol.QUEUE:
        del answers[200]
    error_model = models.DojoError if route.protocol is Protocol.DOJO else models.QueueError
    return {**answers, **error_responses(error_model, errors)}


def register_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """Add a model (and the models it nests) to the OpenAPI document's components."""
    json_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(json_schema.pop("$defs", {}))
    schemas[model.__name__] = json_schema


def add_model_routes(app: FastAPI, schemas: dict[str, Any]) -> None:
    for spec in MODELS.values():
        for route in spec.routes:
            schema_cls = route.schema or spec.schema
            register_schema(schemas, schema_cls)
            app.add_api_route(
                route.path,
                _submit_endpoint(spec, route),
                methods=[route.method],
                tags=[spec.family],
                summary=f"{spec.title} ({route.protocol.value})",
                description=f"Model `{spec.request_model_id}`. Authenticate with the `{route.auth.value}` header.",
                responses=_route_responses(route, schema_cls),
                openapi_extra={
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_cls.__name__}"}}},
                    }
                },
            )


router = APIRouter()

NOT_FOUND = error_responses(models.QueueError, {401: "Missing or unknown key", 404: "No such request for this key"})
# How long a cancel of a running request waits for its worker to stop before answering 202.
CANCEL_WAIT_SECONDS = 2.0


@router.get(
    "/v2/requests/status/{request_id}",
    tags=[STATUS_TAG],
    summary="Status of a request (queue protocol)",
    responses={200: {"model": models.QueueStatus}, **NOT_FOUND},
)
def request_status(request_id: str, request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request)
    job = services.store.jobs.get(request_id, key.id)
    position = services.store.jobs.queue_position(job)
    return answer(views.status_view(job, services.base_url, services.storage, queue_position=position))


@router.put(
    "/v2/requests/{request_id}/cancel",
    tags=[STATUS_TAG],
    summary="Cancel a request",
    responses={
        200: {"model": models.QueueStatus},
        202: {"model": models.QueueStatus, "description": "Running: the cancel is acknowledged; the job stops at its next step and is not charged"},
        **NOT_FOUND,
    },
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
    return answer(views.status_view(job, services.base_url, services.storage), 200 if job.status.terminal else 202)


@router.get(
    "/v2/account",
    tags=["account"],
    summary="The key's wallet balance in USD",
    responses={200: {"model": models.Account}, **error_responses(models.QueueError, {401: "Missing or unknown key"})},
)
def account(request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request)
    return answer(views.account_view(services.store.keys.get(key.id)))


@router.post(
    "/flux-1-schnell/v1/checkStatus",
    tags=["flux1"],
    summary="Status of a batch request",
    responses={200: {"model": models.BatchStatus}, **NOT_FOUND, **error_responses(models.QueueError, {400: "No requestId"})},
)
async def check_status(request: Request) -> JSONResponse:
    services = _services(request)
    key = await run_in_threadpool(services.auth, request, Auth.SECRET)
    body = await read_json(request)
    request_id = body.get("requestId") if isinstance(body, dict) else None
    if not isinstance(request_id, str) or not request_id:
        raise ValidationError("requestId", "is required and must be a string")
    job = await run_in_threadpool(services.store.jobs.get, request_id, key.id)
    return answer(views.batch_status_view(job, services.base_url, services.storage))


DOJO_NOT_FOUND = error_responses(models.DojoError, {401: "Missing or unknown key", 404: "No such job for this key"})


@router.get(
    "/api/v1/jobs/{job_id}",
    tags=["dojo"],
    summary="Status of a job (dojo protocol)",
    responses={200: {"model": models.DojoJob}, **DOJO_NOT_FOUND},
)
def dojo_job(job_id: str, request: Request) -> JSONResponse:
    services = _services(request)
    key = services.auth(request, Auth.BEARER)
    job = services.store.jobs.get(job_id, key.id)
    return answer(views.dojo_job_view(job, services.base_url, services.storage))


@router.get(
    "/api/v1/models",
    tags=["dojo"],
    summary="Models this server serves",
    responses={200: {"model": models.DojoModels}, **error_responses(models.DojoError, {401: "Missing or unknown key"})},
)
def dojo_models(request: Request) -> JSONResponse:
    services = _services(request)
    services.auth(request, Auth.BEARER)
    enabled = [spec for spec in MODELS.values() if services.model_enabled(spec.id)]
    entries = [views.dojo_model_view(spec, services.settings, services.model_switch(spec.id).price_micros) for spec in enabled]
    return answer(models.DojoModels(models=entries))


@router.post(
    "/api/v1/models/{model_id}/run",
    tags=["dojo"],
    summary="Run a model (dojo protocol)",
    responses=error_responses(models.DojoError, {401: "Missing or unknown key", 404: "No such model"}),
)
def dojo_unknown_model(model_id: str, request: Request) -> JSONResponse:
    # Specific model routes are registered before this one; anything reaching here is unknown
    # to the dojo protocol.
    _services(request).auth(request, Auth.BEARER)
    raise ModelNotFoundError(model_id)


@router.get(
    MEDIA_PATH + "/{token}/{name}",
    tags=["media"],
    summary="A stored output",
    responses={
        200: {"content": {"image/*": {}, "application/octet-stream": {}}, "description": "The file"},
        307: {"description": "With S3 storage: a redirect to a fresh presigned URL"},
        **error_responses(models.QueueError, {404: "No such media (or deleted by retention)"}),
    },
)
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


@router.get("/healthz", tags=["ops"], summary="Liveness", response_model=models.Health)
def healthz() -> models.Health:
    return models.Health(status="ok")
