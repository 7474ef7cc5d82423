"""The admin API (``/admin/v1``): keys and wallets, ledger and usage, models, jobs, webhook
deliveries, workers and the audit log, for the operator and the web console.

Every change goes through :class:`~imagegate.jobs.admin.AdminActions` as ``admin-api``, which
writes its audit row in the change's transaction. Every listing is a page, newest first, with a
``next_cursor``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from imagegate.api.admin.access import require_admin
from imagegate.api.admin.schemas import (
    AdminError,
    AuditEntryView,
    CreatedKey,
    CreateKey,
    DeliveryView,
    JobDetail,
    JobView,
    KeyDetail,
    KeyView,
    LedgerEntryView,
    ModelView,
    Page,
    SetPrice,
    Text,
    TopUp,
    UsagePage,
    UsageRowView,
    UsageTotalsView,
    WorkerView,
)
from imagegate.api.services import Services
from imagegate.api.submission import check_content_type
from imagegate.api.webhook_routes import redeliver_final_event
from imagegate.billing.pricing import price_of_defaults, price_source
from imagegate.catalog import MODELS, ModelSpec
from imagegate.exceptions import RequestNotFoundError, ValidationError
from imagegate.jobs.audit import Actor, AuditFilter
from imagegate.jobs.outbox import EVENT_STATES
from imagegate.jobs.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, TimeRange, page_of
from imagegate.jobs.paging import Page as StorePage
from imagegate.jobs.queue import JobFilter
from imagegate.jobs.status import JobStatus
from imagegate.jobs.usage import UsageFilter, UsageGroup
from imagegate.protocol.views import media_urls

PageT = TypeVar("PageT", bound=Page[Any])

TAG = "admin"
ACTOR = Actor.ADMIN_API

def _json_bodies(request: Request) -> None:
    # A body declared as something else (`curl -d` sends a form) is named as such, not misread.
    if request.method in ("POST", "PUT", "PATCH"):
        check_content_type(request)


router = APIRouter(
    prefix="/admin/v1",
    tags=[TAG],
    dependencies=[Depends(require_admin), Depends(_json_bodies)],
    # A body without a Content-Type is read as JSON, as on every other route.
    strict_content_type=False,
    responses={
        401: {"model": AdminError, "description": "Missing or wrong admin token"},
        404: {"model": AdminError, "description": "Not found; every route answers 404 while no admin token is configured"},
    },
)

_INVALID = {400: {"model": AdminError, "description": "A field breaks a rule (the message names it)"}}
_CONFLICT = {409: {"model": AdminError, "description": "The change contradicts the current state"}}


def _services(request: Request) -> Services:
    return request.app.state.services


def _page(model: type[PageT], found: StorePage[Any], view: Callable[[Any], Any]) -> PageT:
    return model(data=[view(item) for item in found.items], next_cursor=found.next_cursor)


@dataclass
class PageQuery:
    limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Items per page")
    cursor: str | None = Query(None, description="`next_cursor` of the previous page")


@dataclass
class PeriodQuery:
    since: datetime | None = Query(None, description="From this time on (ISO 8601; UTC when no offset is given)")
    until: datetime | None = Query(None, description="Before this time")

    @property
    def range(self) -> TimeRange:
        since, until = (None if t is None else _epoch(t) for t in (self.since, self.until))
        if since is not None and until is not None and until <= since:
            raise ValidationError("until", "must be later than since")
        return TimeRange(since, until)


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# -- keys ---------------------------------------------------------------------------------------------


@router.get("/keys", summary="API keys with their balances", response_model=Page[KeyView], responses=_INVALID)
def list_keys(request: Request, page: PageQuery = Depends(), disabled: bool | None = Query(None)) -> Any:
    found = _services(request).store.keys.page(limit=page.limit, cursor=page.cursor, disabled=disabled)
    return _page(Page[KeyView], found, KeyView.of)


@router.post(
    "/keys", summary="Create a key (its plaintext is answered this once)", status_code=201,
    response_model=CreatedKey, responses=_INVALID,
)
def create_key(request: Request, body: CreateKey) -> Any:
    plaintext, key = _services(request).store.admin.create_key(ACTOR, name=body.name, balance_micros=body.balance)
    return CreatedKey(api_key=plaintext, key=KeyDetail.of(key))


@router.get("/keys/{key_id}", summary="One key, with its webhook secret", response_model=KeyDetail)
def get_key(request: Request, key_id: Text) -> Any:
    return KeyDetail.of(_services(request).store.keys.get(key_id))


@router.post("/keys/{key_id}/topup", summary="Add US dollars to a key's wallet", response_model=KeyView, responses=_INVALID)
def topup_key(request: Request, key_id: Text, body: TopUp) -> Any:
    return KeyView.of(_services(request).store.admin.topup(ACTOR, key_id, body.amount))


@router.post("/keys/{key_id}/disable", summary="Disable a key (its requests answer 403)", response_model=KeyView)
def disable_key(request: Request, key_id: Text) -> Any:
    return KeyView.of(_services(request).store.admin.set_key_disabled(ACTOR, key_id, True))


@router.post("/keys/{key_id}/enable", summary="Enable a disabled key", response_model=KeyView)
def enable_key(request: Request, key_id: Text) -> Any:
    return KeyView.of(_services(request).store.admin.set_key_disabled(ACTOR, key_id, False))


@router.post(
    "/keys/{key_id}/rotate-webhook-secret", summary="A new webhook signing secret for the key", response_model=KeyDetail
)
def rotate_webhook_secret(request: Request, key_id: Text) -> Any:
    return KeyDetail.of(_services(request).store.admin.rotate_webhook_secret(ACTOR, key_id))


@router.get(
    "/keys/{key_id}/ledger", summary="A key's ledger, newest entry first", response_model=Page[LedgerEntryView], responses=_INVALID
)
def key_ledger(request: Request, key_id: Text, page: PageQuery = Depends()) -> Any:
    keys = _services(request).store.keys
    keys.get(key_id)
    found = keys.ledger_page(key_id, limit=page.limit, cursor=page.cursor)
    return _page(Page[LedgerEntryView], found, LedgerEntryView.of)


# -- usage ---------------------------------------------------------------------------------------------


def _groups(text: str) -> list[UsageGroup]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    allowed = ", ".join(g.value for g in UsageGroup)
    try:
        groups = [UsageGroup(name) for name in names]
    except ValueError as exc:
        raise ValidationError("group_by", f"must be a comma-separated list of: {allowed}") from exc
    if not groups:
        raise ValidationError("group_by", f"must name at least one of: {allowed}")
    return sorted(set(groups), key=list(UsageGroup).index)


@router.get(
    "/usage", summary="Requests, images and spend per key, model and UTC day", response_model=UsagePage, responses=_INVALID
)
def usage(
    request: Request,
    page: PageQuery = Depends(),
    period: PeriodQuery = Depends(),
    key_id: Text | None = Query(None),
    model_id: Text | None = Query(None),
    group_by: str = Query("day,key,model", description="Comma-separated: day, key, model"),
) -> Any:
    groups = _groups(group_by)
    where = UsageFilter(period=period.range, key_id=key_id, model_id=model_id)
    store = _services(request).store
    found = store.usage.page(where, groups, limit=page.limit, cursor=page.cursor)
    return UsagePage(
        data=[UsageRowView.of(r) for r in found.items], next_cursor=found.next_cursor, group_by=groups,
        since=where.period.since, until=where.period.until, totals=UsageTotalsView.of(store.usage.totals(where)),
    )


# -- models -------------------------------------------------------------------------------------------


def _spec(model_id: str) -> ModelSpec:
    spec = MODELS.get(model_id)
    if spec is None:
        raise RequestNotFoundError(f"no model {model_id!r} in the catalog")
    return spec


def _model_views(services: Services, specs: list[ModelSpec]) -> list[ModelView]:
    # Read afresh, not through the API's one-second cache: an operator sees a change at once.
    switches = services.store.models.states()
    now = time.time()
    live = [w for w in services.store.workers.list() if w.live(now, services.settings.lease_seconds)]
    views = []
    for spec in specs:
        switch = switches.get(spec.id)
        runtime = switch.price_micros if switch else None
        config_enabled = services.settings.model(spec.id).enabled
        switch_enabled = switch.enabled if switch else True
        loaded_on = [w.id for w in live if spec.id in w.loaded]
        views.append(
            ModelView(
                id=spec.id, public_id=spec.request_model_id, title=spec.title, family=spec.family, task=spec.task,
                enabled=config_enabled and switch_enabled, config_enabled=config_enabled, switch_enabled=switch_enabled,
                price=price_of_defaults(spec, services.settings, runtime_micros=runtime), price_source=price_source(spec, services.settings, runtime),
                runtime_price=runtime, loaded=bool(loaded_on), loaded_on=loaded_on,
                workers=[w.id for w in live if w.serves(spec.id)],
            )
        )
    return views


@router.get(
    "/models", summary="Every catalog model: enabled, price, loaded, served by", response_model=Page[ModelView], responses=_INVALID
)
def list_models(request: Request, page: PageQuery = Depends()) -> Any:
    chosen = page_of(list(MODELS.values()), lambda s: s.id, cursor=page.cursor, limit=page.limit)
    return Page[ModelView](data=_model_views(_services(request), chosen.items), next_cursor=chosen.next_cursor)


@router.get("/models/{model_id}", summary="One catalog model", response_model=ModelView)
def get_model(request: Request, model_id: Text) -> Any:
    return _model_views(_services(request), [_spec(model_id)])[0]


def _switched(request: Request, model_id: str, enabled: bool) -> ModelView:
    services = _services(request)
    spec = _spec(model_id)
    services.store.admin.set_model_enabled(ACTOR, spec.id, enabled)
    return _model_views(services, [spec])[0]


@router.post("/models/{model_id}/enable", summary="Switch a model on (the config's `enabled` still applies)", response_model=ModelView)
def enable_model(request: Request, model_id: Text) -> Any:
    return _switched(request, model_id, True)


@router.post("/models/{model_id}/disable", summary="Switch a model off (its routes answer model not found)", response_model=ModelView)
def disable_model(request: Request, model_id: Text) -> Any:
    return _switched(request, model_id, False)


def _priced(request: Request, model_id: str, micros: int | None) -> ModelView:
    services = _services(request)
    spec = _spec(model_id)
    services.store.admin.set_model_price(ACTOR, spec.id, micros)
    return _model_views(services, [spec])[0]


@router.put(
    "/models/{model_id}/price", summary="Set a runtime price per image (over the catalog's and the config's)",
    response_model=ModelView, responses=_INVALID,
)
def set_model_price(request: Request, model_id: Text, body: SetPrice) -> Any:
    return _priced(request, model_id, body.price)


@router.delete("/models/{model_id}/price", summary="Remove the runtime price", response_model=ModelView)
def clear_model_price(request: Request, model_id: Text) -> Any:
    return _priced(request, model_id, None)


# -- jobs ---------------------------------------------------------------------------------------------


@router.get("/jobs", summary="Jobs of every key, newest first", response_model=Page[JobView], responses=_INVALID)
def list_jobs(
    request: Request,
    page: PageQuery = Depends(),
    period: PeriodQuery = Depends(),
    key_id: Text | None = Query(None),
    model_id: Text | None = Query(None),
    status: list[JobStatus] = Query([], description="Any of these statuses (repeat the parameter)"),
) -> Any:
    where = JobFilter(key_id=key_id, model_id=model_id, statuses=tuple(status), period=period.range)
    found = _services(request).store.jobs.page(where, limit=page.limit, cursor=page.cursor)
    return _page(Page[JobView], found, JobView.of)


def _detail(services: Services, job_id: str) -> JobDetail:
    job = services.store.jobs.get(job_id)
    return JobDetail.of_job(job, media_urls(job, services.base_url, services.storage))


@router.get("/jobs/{job_id}", summary="One job, with its parameters", response_model=JobDetail)
def get_job(request: Request, job_id: Text) -> Any:
    return _detail(_services(request), job_id)


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel any key's job (queued: now, released; running: at its next step)",
    response_model=JobDetail,
    responses=_CONFLICT,
)
def cancel_job(request: Request, job_id: Text) -> Any:
    services = _services(request)
    job = services.store.admin.cancel_job(ACTOR, job_id)
    return JobDetail.of_job(job, media_urls(job, services.base_url, services.storage))


# -- webhook deliveries ----------------------------------------------------------------------------------


@router.get(
    "/webhooks", summary="Webhook deliveries (events) of every request, newest first", response_model=Page[DeliveryView],
    responses=_INVALID,
)
def list_deliveries(
    request: Request,
    page: PageQuery = Depends(),
    state: str | None = Query(None, json_schema_extra={"enum": list(EVENT_STATES)}),
    request_id: Text | None = Query(None),
) -> Any:
    if state is not None and state not in EVENT_STATES:
        raise ValidationError("state", f"must be one of: {', '.join(EVENT_STATES)}")
    found = _services(request).store.outbox.page(state=state, job_id=request_id, limit=page.limit, cursor=page.cursor)
    return _page(Page[DeliveryView], found, DeliveryView.of)


@router.post(
    "/webhooks/{request_id}/redeliver",
    summary="Send a request's final-status webhook again (same webhook-id)",
    status_code=202,
    response_model=DeliveryView,
    responses={**_INVALID, **_CONFLICT},
)
def redeliver(request: Request, request_id: Text) -> Any:
    services = _services(request)
    job = services.store.jobs.get(request_id)
    event = redeliver_final_event(job, lambda job_id: services.store.admin.redeliver_webhook(ACTOR, job_id))
    return DeliveryView.of(event)


# -- workers and the audit log ------------------------------------------------------------------------------


@router.get("/workers", summary="The worker registry, with liveness", response_model=Page[WorkerView], responses=_INVALID)
def list_workers(request: Request, page: PageQuery = Depends()) -> Any:
    services = _services(request)
    now = time.time()
    chosen = page_of(services.store.workers.list(), lambda w: w.id, cursor=page.cursor, limit=page.limit)
    return _page(Page[WorkerView], chosen, lambda w: WorkerView.of(w, now, services.settings.lease_seconds))


@router.get(
    "/audit", summary="Every change made through the admin API or the command line, newest first",
    response_model=Page[AuditEntryView], responses=_INVALID,
)
def list_audit(
    request: Request,
    page: PageQuery = Depends(),
    period: PeriodQuery = Depends(),
    actor: Text | None = Query(None, examples=["admin-api"]),
    action: Text | None = Query(None, examples=["key.topup"]),
    target: Text | None = Query(None, description="A key, model or job id"),
) -> Any:
    where = AuditFilter(actor=actor, action=action, target=target, period=period.range)
    found = _services(request).store.audit.page(where, limit=page.limit, cursor=page.cursor)
    return _page(Page[AuditEntryView], found, AuditEntryView.of)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"], include_in_schema=False
)
def no_such_route(request: Request, path: str) -> Any:
    # Last, and behind the same gate as every route: while the admin API is off, a wrong method
    # on a real route answers 404 too, rather than a 405 that would give the route away.
    raise RequestNotFoundError(f"No admin route {request.method} /admin/v1/{path}")
