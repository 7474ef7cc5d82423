"""The submit pipeline every generating endpoint shares, then the answer in its protocol.

Order matters and is the same everywhere: authenticate (401/403), model enabled (400/404), parse
and validate the body (400), check the webhook (400), then one transaction takes a token of the
key's rate limit (429), holds the price (402) and inserts the job — nothing is queued, charged or
counted against the limit before that last step.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.types import Message

from imagegate.api.responses import answer
from imagegate.api.services import Services
from imagegate.catalog import Auth, ModelSpec, Protocol, Route
from imagegate.exceptions import PayloadTooLargeError, SyncTimeoutError, UnsupportedMediaTypeError, ValidationError
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import ApiKey, Job, NewJob
from imagegate.protocol import views
from imagegate.protocol.models import SyncOutput, SyncUrl
from imagegate.telemetry.logs import bind_request
from imagegate.webhooks.targets import check_webhook_url

WEBHOOK_MODES = ("terminal", "sync")


# No request schema nests deeper than a few levels; a bound keeps hostile nesting away from
# every recursive step after parsing (validation, hashing, storing).
MAX_JSON_DEPTH = 64
TOO_DEEP = f"is nested too deeply (more than {MAX_JSON_DEPTH} levels)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_content_type(request: Request) -> None:
    # Every documented example sends `Content-Type: application/json`; a body declared as a form,
    # multipart or text is a client mistake worth naming. No header at all is taken as JSON.
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return
    raise UnsupportedMediaTypeError("Content-Type", f"must be application/json (got {declared[:100]!r})")


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _json_error(exc: ValueError) -> str:
    text = str(exc)
    if "integer string conversion" in text:  # CPython's guard against huge integer literals
        return "is not valid JSON (a number has more than 4300 digits)"
    return f"is not valid JSON ({text})"


async def read_json(request: Request) -> Any:
    check_content_type(request)
    # At most MAX_BODY_BYTES arrive here: BodyLimitMiddleware stops longer bodies as they stream.
    body = await request.body()
    if not body.strip():
        raise ValidationError("body", "must be a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("body", "must be UTF-8 encoded JSON") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValidationError("body", TOO_DEEP) from None
    except ValueError as exc:
        raise ValidationError("body", _json_error(exc)) from exc
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise ValidationError("body", TOO_DEEP)
    return value


# Room for a multipart body's boundaries, part headers and text fields beside its files.
FORM_OVERHEAD_BYTES = 1024 * 1024


def is_multipart(request: Request) -> bool:
    declared = request.headers.get("content-type") or ""
    return declared.split(";", 1)[0].strip().lower() == "multipart/form-data"


@asynccontextmanager
async def read_form(request: Request, *, max_file_bytes: int, max_files: int) -> AsyncIterator[FormData]:
    """A multipart body, read through Starlette's parser with a bound on the whole body (files
    of ``max_file_bytes`` each, plus room for the rest): past it, 413 before anything more is
    read. The parsed files are closed when the block ends."""
    if not is_multipart(request):
        declared = request.headers.get("content-type")
        raise UnsupportedMediaTypeError("Content-Type", f"must be multipart/form-data (got {(declared or 'none')[:100]!r})")
    limit = max_files * max_file_bytes + FORM_OVERHEAD_BYTES
    too_large = PayloadTooLargeError("body", f"must be at most {limit:,} bytes")
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > limit:
        raise too_large
    received = 0
    receive = request.receive

    async def bounded() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large
        return message

    async with Request(request.scope, bounded).form(max_files=max_files, max_fields=100) as form:
        yield form


def _webhook(request: Request, params: dict[str, Any], route: Route, services: Services) -> tuple[str | None, str | None, list[str] | None]:
    settings = services.settings
    header = request.headers.get("x-webhook-url")
    if header:
        mode = (request.headers.get("x-webhook-mode") or "terminal").strip().lower()
        if mode not in WEBHOOK_MODES:
            raise ValidationError("X-Webhook-Mode", "must be one of: terminal, sync")
        return check_webhook_url(header, "X-Webhook-URL", settings), mode, None
    if params.get("webhook"):
        url = check_webhook_url(params["webhook"], "webhook", settings)
        return url, "events", list(params.get("webhook_events_filter") or ["*"])
    if route.protocol is Protocol.BATCH and params.get("webhook_url"):
        return check_webhook_url(params["webhook_url"], "webhook_url", settings), "batch", None
    return None, None, None


def _request_hash(path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (valid JSON escape, not valid UTF-8) in an ignored field
    # must not break hashing; valid text encodes exactly as before.
    return hashlib.sha256(f"{path}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


async def admit(request: Request, services: Services, auth: Auth | None) -> ApiKey:
    """The key of a submitting request (401/403). Its rate limit is taken with the job's hold."""
    return await run_in_threadpool(services.auth, request, auth)


async def enqueue(
    request: Request,
    services: Services,
    key: ApiKey,
    spec: ModelSpec,
    route: Route,
    params: dict[str, Any],
    *,
    body: Any,
    protocol: str,
) -> Job:
    """Take a token of the key's rate limit (429), hold the price of validated ``params`` and
    queue the job (402), with the request's webhook and Idempotency-Key. ``body`` is what the
    client sent, the same one for a retried request."""
    webhook_url, webhook_mode, webhook_events = _webhook(request, params, route, services)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise ValidationError("Idempotency-Key", "must be 1 to 200 characters")
    new = NewJob(
        key_id=key.id,
        model_id=spec.id,
        protocol=protocol,
        params=params,
        price_micros=services.price(spec, params),
        max_attempts=services.settings.max_attempts,
        webhook_url=webhook_url,
        webhook_mode=webhook_mode,
        webhook_events=webhook_events,
        idempotency_key=idempotency_key,
        request_hash=_request_hash(request.url.path, body) if idempotency_key else None,
        public_model_id=spec.request_model_id,
    )
    job, _created = await run_in_threadpool(partial(services.store.jobs.submit, new, rate_limit=services.rate_limit))
    bind_request(request_id=job.id)
    return job


async def submit(request: Request, spec: ModelSpec, route: Route) -> JSONResponse:
    services: Services = request.app.state.services
    bind_request(model=spec.id)
    key = await admit(request, services, route.auth)
    await run_in_threadpool(services.enabled_model, spec.id, spec.request_model_id)
    body = await read_json(request)
    params = spec.validate(body, route)
    job = await enqueue(request, services, key, spec, route, params, body=body, protocol=route.protocol.value)
    return await respond(request, services, route, job, params)


async def wait_or_timeout(services: Services, job: Job) -> Job:
    """Synchronous styles: the finished job, or a timeout error with the job canceled (not charged)."""
    timeout = services.settings.sync_timeout_seconds
    done = await services.waiter.until_end(job.id, timeout)
    if done is not None:
        return done
    await run_in_threadpool(services.store.jobs.cancel, job.id, job.key_id)
    raise SyncTimeoutError(
        f"The request did not finish within {timeout:g} seconds; it was canceled and not charged ({job.id})"
    )


async def respond(request: Request, services: Services, route: Route, job: Job, params: dict[str, Any]) -> JSONResponse:
    base = services.base_url
    protocol = route.protocol
    if protocol is Protocol.QUEUE:
        if params.get("sync_mode"):
            done = await wait_or_timeout(services, job)
            inline = await run_in_threadpool(views.data_uris, done, services.storage) if done.status is JobStatus.COMPLETED else None
            return answer(views.status_view(done, base, services.storage, inline=inline))
        return answer(views.queued_view(job, base), 202)
    if protocol in (Protocol.SYNC_OUTPUT, Protocol.SYNC_URL):
        done = await wait_or_timeout(services, job)
        if done.status is not JobStatus.COMPLETED:
            status_code, failure = views.failure_view(done)
            return answer(failure, status_code)
        url = views.media_urls(done, base, services.storage)[0]
        return answer(SyncOutput(output=url) if protocol is Protocol.SYNC_OUTPUT else SyncUrl(url=url))
    if protocol is Protocol.BATCH:
        if job.webhook_url:
            return answer(views.batch_queued_view(job, webhook=True), 202)
        done = await services.waiter.until_end(job.id, services.settings.batch_wait_seconds)
        if done is not None:
            return answer(views.batch_status_view(done, base, services.storage))
        return answer(views.batch_queued_view(job, webhook=False), 202)
    if protocol is Protocol.DOJO:
        key = await run_in_threadpool(services.store.keys.get, job.key_id)
        return answer(views.dojo_submit_view(job, base, key.balance_micros))
    raise AssertionError(f"unknown protocol {protocol}")
