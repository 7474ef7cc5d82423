"""The admin API's request and response bodies.

Money is a string of US dollars with six decimals (``"10.000000"``) and times are ISO 8601 in UTC
(``"2025-01-31T12:00:00.000Z"``), as in the rest of imagegate's API; the models hold micro-dollars
and epoch seconds and turn them into those strings when they are serialised.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from imagegate.billing.money import format_usd, parse_amount
from imagegate.billing.pricing import PriceSource
from imagegate.jobs.audit import AuditEntry
from imagegate.jobs.keys import ApiKey, LedgerEntry
from imagegate.jobs.outbox import PENDING, WebhookEvent
from imagegate.jobs.queue import Job
from imagegate.jobs.status import JobStatus, LedgerKind
from imagegate.jobs.usage import UsageGroup, UsageRow, UsageTotals
from imagegate.jobs.workers import WorkerInfo, WorkerState
from imagegate.protocol.views import iso

T = TypeVar("T")

_INSTANT_SCHEMA = {"type": "string", "format": "date-time", "examples": ["2025-01-31T12:00:00.000Z"]}
_USD_SCHEMA = {"type": "string", "description": "US dollars, six decimals", "examples": ["10.000000"]}

Instant = Annotated[float, PlainSerializer(iso, return_type=str), WithJsonSchema(_INSTANT_SCHEMA)]
MaybeInstant = Annotated[
    float | None, PlainSerializer(iso, return_type=str | None), WithJsonSchema({"anyOf": [_INSTANT_SCHEMA, {"type": "null"}]})
]
Usd = Annotated[int, PlainSerializer(format_usd, return_type=str), WithJsonSchema(_USD_SCHEMA)]
MaybeUsd = Annotated[
    int | None,
    PlainSerializer(lambda v: None if v is None else format_usd(v), return_type=str | None),
    WithJsonSchema({"anyOf": [_USD_SCHEMA, {"type": "null"}]}),
]


def _amount(positive: bool) -> Any:
    def parse(value: Any) -> int:
        try:
            return parse_amount(value, positive=positive)
        except ValueError as exc:
            raise PydanticCustomError("usd_amount", str(exc)) from exc

    return parse


_AMOUNT_INPUT = {"type": "string", "pattern": r"^\d+(\.\d{1,6})?$", "examples": ["10", "0.25"]}
# Amounts in requests: decimal strings of dollars; negative, non-finite or finer than a
# micro-dollar is refused, naming the field.
AmountUsd = Annotated[int, BeforeValidator(_amount(positive=False)), WithJsonSchema(_AMOUNT_INPUT)]
PositiveAmountUsd = Annotated[int, BeforeValidator(_amount(positive=True)), WithJsonSchema(_AMOUNT_INPUT)]


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refused here, it would otherwise fail in the database.
    if "\x00" in value:
        raise PydanticCustomError("storable_text", "must not contain NUL characters")
    return value


# Every string the admin API takes (ids in paths and filters, names).
Text = Annotated[str, AfterValidator(_storable)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors and pages ------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["no API key 'key_x'"])


class AdminError(BaseModel):
    """Every admin error: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


# -- keys and the ledger -----------------------------------------------------------------------------


class CreateKey(Body):
    name: Text = Field(default="", max_length=200)
    balance: AmountUsd = Field(default="0", validate_default=True, description="Starting balance in US dollars")


class TopUp(Body):
    amount: PositiveAmountUsd = Field(description="US dollars to add")


class KeyView(BaseModel):
    id: str
    name: str
    key_prefix: str = Field(description="The first characters of the key, to recognise it")
    balance: Usd
    disabled: bool
    created_at: Instant

    @staticmethod
    def fields_of(key: ApiKey) -> dict[str, Any]:
        return dict(
            id=key.id, name=key.name, key_prefix=key.key_prefix, balance=key.balance_micros,
            disabled=key.disabled, created_at=key.created_at,
        )

    @classmethod
    def of(cls, key: ApiKey) -> "KeyView":
        return cls(**cls.fields_of(key))


class KeyDetail(KeyView):
    webhook_secret: str = Field(description="Signs this key's webhooks (Standard Webhooks)")

    @classmethod
    def of(cls, key: ApiKey) -> "KeyDetail":
        return cls(**KeyView.fields_of(key), webhook_secret=key.webhook_secret)


class CreatedKey(BaseModel):
    api_key: str = Field(description="The key itself: shown this once, only its hash is stored")
    key: KeyDetail


class LedgerEntryView(BaseModel):
    id: int
    kind: LedgerKind
    amount: Usd = Field(description="Signed: holds are negative")
    job_id: str | None
    created_at: Instant

    @classmethod
    def of(cls, entry: LedgerEntry) -> "LedgerEntryView":
        return cls(id=entry.id, kind=entry.kind, amount=entry.amount_micros, job_id=entry.job_id, created_at=entry.created_at)


# -- usage -------------------------------------------------------------------------------------------


class UsageRowView(BaseModel):
    day: date | None = Field(description="UTC day the jobs ended (when grouped by day)")
    key_id: str | None
    model_id: str | None
    requests: int = Field(description="Jobs that ended, whatever their status")
    images: int = Field(description="Images the completed jobs returned")
    spend: Usd = Field(description="What the charged jobs (COMPLETED, FAILED) cost")

    @classmethod
    def of(cls, row: UsageRow) -> "UsageRowView":
        day = None if row.day is None else date(1970, 1, 1) + timedelta(days=row.day)
        return cls(day=day, key_id=row.key_id, model_id=row.model_id, requests=row.requests, images=row.images, spend=row.spend_micros)


class UsageTotalsView(BaseModel):
    requests: int
    images: int
    spend: Usd

    @classmethod
    def of(cls, totals: UsageTotals) -> "UsageTotalsView":
        return cls(requests=totals.requests, images=totals.images, spend=totals.spend_micros)


class UsagePage(Page[UsageRowView]):
    group_by: list[UsageGroup]
    since: MaybeInstant
    until: MaybeInstant
    totals: UsageTotalsView = Field(description="Over the whole range and filter, not only this page")


# -- models and workers ---------------------------------------------------------------------------------


class SetPrice(Body):
    price: AmountUsd = Field(description="US dollars per image, over the catalog's and the config's price")


class ModelView(BaseModel):
    id: str
    public_id: str = Field(description="The id in request ids and messages")
    title: str
    family: str
    task: str
    enabled: bool = Field(description="Served now: on in the config and not switched off")
    config_enabled: bool
    switch_enabled: bool = Field(description="The operator's runtime switch (admin API, `imagegate models`)")
    price: MaybeUsd = Field(description="A request with the schema's defaults; null when the price needs an input")
    price_source: PriceSource
    runtime_price: MaybeUsd = Field(description="The runtime price per image set through the admin API, if any")
    loaded: bool = Field(description="Held in memory by a live worker")
    loaded_on: list[str] = Field(description="Live workers that hold it in memory")
    workers: list[str] = Field(description="Live workers that serve it")


class WorkerView(BaseModel):
    id: str
    host: str
    pid: int
    device: str
    version: str
    models: list[str] | None = Field(description="The model ids it serves; null serves every model")
    loaded: list[str]
    state: WorkerState
    live: bool = Field(description="Its last heartbeat is within lease_seconds")
    heartbeat_age_seconds: float
    current_job: str | None
    last_error: str | None
    started_at: Instant
    heartbeat_at: Instant

    @classmethod
    def of(cls, info: WorkerInfo, now: float, lease_seconds: float) -> "WorkerView":
        return cls(
            id=info.id, host=info.host, pid=info.pid, device=info.device, version=info.version, models=info.models,
            loaded=info.loaded, state=info.state, live=info.live(now, lease_seconds),
            heartbeat_age_seconds=round(max(0.0, now - info.heartbeat_at), 3), current_job=info.current_job,
            last_error=info.last_error, started_at=info.started_at, heartbeat_at=info.heartbeat_at,
        )


# -- jobs and webhooks -----------------------------------------------------------------------------------


class JobView(BaseModel):
    id: str
    key_id: str
    model_id: str
    protocol: str
    status: JobStatus
    price: Usd = Field(description="Held while it runs; the charge once it ends COMPLETED or FAILED")
    attempts: int
    max_attempts: int
    progress: float
    cancel_requested: bool
    error: str | None
    worker: str | None = Field(description="The worker holding its lease now")
    webhook_url: str | None
    created_at: Instant
    updated_at: Instant
    started_at: MaybeInstant
    completed_at: MaybeInstant

    @staticmethod
    def fields_of(job: Job) -> dict[str, Any]:
        return dict(
            id=job.id, key_id=job.key_id, model_id=job.model_id, protocol=job.protocol, status=job.status,
            price=job.price_micros, attempts=job.attempts, max_attempts=job.max_attempts, progress=job.progress,
            cancel_requested=job.cancel_requested, error=job.error, worker=job.lease_owner, webhook_url=job.webhook_url,
            created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at, completed_at=job.completed_at,
        )

    @classmethod
    def of(cls, job: Job) -> "JobView":
        return cls(**cls.fields_of(job))


class JobDetail(JobView):
    params: dict[str, Any]
    progress_detail: dict[str, Any] | None
    output: dict[str, Any] | None
    media_urls: list[str]
    webhook_mode: str | None
    webhook_events: list[str] | None
    idempotency_key: str | None

    @classmethod
    def of_job(cls, job: Job, media_urls: list[str]) -> "JobDetail":
        return cls(
            **JobView.fields_of(job), params=job.params, progress_detail=job.progress_detail, output=job.output,
            media_urls=media_urls, webhook_mode=job.webhook_mode, webhook_events=job.webhook_events,
            idempotency_key=job.idempotency_key,
        )


class DeliveryView(BaseModel):
    event_id: str = Field(description="The webhook-id header: the same on every attempt")
    request_id: str
    key_id: str
    target_url: str
    event_type: str
    state: str
    attempts: int
    created_at: Instant
    next_attempt_at: MaybeInstant = Field(description="While pending")
    deliver_until: Instant
    delivered_at: MaybeInstant
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def of(cls, event: WebhookEvent) -> "DeliveryView":
        return cls(
            event_id=event.id, request_id=event.job_id, key_id=event.key_id, target_url=event.target_url,
            event_type=event.event_type, state=event.state, attempts=event.attempts, created_at=event.created_at,
            next_attempt_at=event.next_attempt_at if event.state == PENDING else None, deliver_until=event.deliver_until,
            delivered_at=event.delivered_at, last_status_code=event.last_status_code, last_error=event.last_error,
        )


# -- audit -------------------------------------------------------------------------------------------------


class AuditEntryView(BaseModel):
    id: int
    at: Instant
    actor: str = Field(examples=["admin-api", "cli"])
    action: str = Field(examples=["key.topup"])
    target: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, entry: AuditEntry) -> "AuditEntryView":
        return cls(id=entry.id, at=entry.at, actor=entry.actor, action=entry.action, target=entry.target, detail=entry.detail)
