"""Every response body imagegate sends, as typed models: the status objects of each protocol,
submit answers, errors, the account and its ledger, webhook payloads, the model catalog, event
stream data and uploads.

The views (:mod:`imagegate.protocol.views`) build them, the API serialises them with
:meth:`Body.content`, the deliverer renders webhook bodies from them and ``/openapi.json``
describes every response with them. Field order is the order on the wire, and every field is
sent (``null`` included) unless it is declared with :data:`OMITTED_IF_NONE`: the hosted APIs'
clients see exactly the bodies they always did.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imagegate.jobs.status import JobStatus, LedgerKind


def _is_none(value: Any) -> bool:
    return value is None


# A field the body leaves out when it has no value (instead of sending null).
OMITTED_IF_NONE: Any = Field(default=None, exclude_if=_is_none)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def content(self) -> dict[str, Any]:
        """The JSON object sent on the wire."""
        return self.model_dump(mode="json")


# -- the queue protocol (and the universal status endpoint) ---------------------------------------


class QueueOutput(Body):
    media_url: list[str] = Field(description="Media URLs, or base64 data: URIs for sync_mode answers")
    media_type: str | None
    has_nsfw_concepts: list[bool]
    seed: int | None


class QueueStatus(Body):
    """``GET /v2/requests/status/{request_id}``; also the queue protocol's webhook body."""

    request_id: str
    status: JobStatus
    model_id: str
    error: str | None
    output: QueueOutput | None
    progress: float
    created_at: str | None
    updated_at: str | None
    completed_at: str | None
    # While QUEUED, on polls: how many requests a worker serving its model takes before it.
    queue_position: int | None = OMITTED_IF_NONE


class QueueSubmitted(Body):
    request_id: str
    status: JobStatus
    polling_url: str


class QueueError(Body):
    """Errors of every endpoint outside the dojo and OpenAI-compatible protocols."""

    error: str | None
    message: str | None
    field: str | None = OMITTED_IF_NONE
    request_id: str | None = OMITTED_IF_NONE


# -- sync styles --------------------------------------------------------------------------------------


class SyncOutput(Body):
    output: str


class SyncUrl(Body):
    url: str


# -- the batch protocol (schnell getDataBatch / checkStatus) ------------------------------------------

BatchStatusValue = Literal["queued", "processing", "completed", "failed", "error", "canceled"]


class BatchQueued(Body):
    requestId: str
    status: Literal["queued"]
    message: str
    pollingEndpoint: str
    pollingInstructions: str


class BatchStatus(Body):
    status: BatchStatusValue
    output: str | None
    completedAt: int | None = Field(description="Epoch milliseconds")
    error: str | None = OMITTED_IF_NONE


class _RequestIdFirst(Body):
    requestId: str


# Fields are laid out base class last to first: the request id leads, then the checkStatus body.
class BatchWebhookPayload(BatchStatus, _RequestIdFirst):
    """The checkStatus body with the request id, so one receiver can serve many requests."""


# -- the dojo protocol (/api/v1/...) ------------------------------------------------------------------

DojoStatusValue = Literal["pending", "processing", "completed", "failed"]
Credits = int | float


class DojoSubmitted(Body):
    jobId: str
    status: Literal["pending"]
    statusUrl: str
    creditCost: Credits
    creditsRemaining: Credits


class DojoOutput(Body):
    images: list[str]


class DojoJob(Body):
    jobId: str
    status: DojoStatusValue
    output: DojoOutput | None
    creditCost: Credits
    error: str | None


class DojoEndpoint(Body):
    path: str
    protocol: str


class DojoModel(Body):
    id: str
    name: str
    type: str
    family: str
    endpoints: list[DojoEndpoint]
    creditCost: Credits | None


class DojoModels(Body):
    models: list[DojoModel]


class DojoErrorDetail(Body):
    code: str
    message: str


class DojoError(Body):
    error: DojoErrorDetail


WebhookPayload = QueueStatus | DojoJob | BatchWebhookPayload


# -- the OpenAI-compatible images API ------------------------------------------------------------------


class OpenAIImage(Body):
    url: str | None = OMITTED_IF_NONE
    b64_json: str | None = OMITTED_IF_NONE
    revised_prompt: str | None = OMITTED_IF_NONE


class OpenAIImages(Body):
    created: int = Field(description="Unix seconds when the request was made")
    data: list[OpenAIImage]


class OpenAIErrorDetail(Body):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Body):
    error: OpenAIErrorDetail


# -- account, history, ledger ----------------------------------------------------------------------------


class Account(Body):
    key_id: str
    name: str
    balance: str = Field(description="USD, six decimals")
    currency: Literal["USD"]


class RequestSummary(QueueStatus):
    """One of the key's requests: its status object, what it costs and its first output."""

    cost: str = Field(description="USD held or charged; 0 for ERROR and CANCELED, which are not charged")
    thumbnail: str | None = Field(description="The first output's media URL")


class RequestPage(Body):
    items: list[RequestSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last one")


class LedgerItem(Body):
    id: int
    kind: LedgerKind
    amount: str = Field(description="USD, signed: holds are negative, top-ups and releases positive")
    request_id: str | None
    created_at: str | None


class LedgerPage(Body):
    items: list[LedgerItem]
    next_cursor: str | None


# -- the catalog ------------------------------------------------------------------------------------------


class CatalogRoute(Body):
    method: str
    path: str
    protocol: str
    auth_header: str


class PriceRule(Body):
    description: str = Field(description="The rule in words")
    usd_for_defaults: str | None = Field(description="USD for a request that leaves every priced parameter at its default")
    per_image: bool = Field(description="The price is multiplied by the number of images asked for")
    varies: bool = Field(description="Other parameters (sizes, modes) change the price")
    source: Literal["catalog", "operator", "default"] = Field(
        description="The catalog's price, the operator's [models.<id>] price_usd, or default_price_usd"
    )


class CatalogEntry(Body):
    id: str = Field(description="The catalog id (configuration, model switches, the OpenAI-compatible `model`)")
    model_id: str = Field(description="The id in request ids and status objects")
    title: str
    family: str
    task: str
    routes: list[CatalogRoute]
    inputs: dict[str, str] = Field(description="Fields that take image (or zip) URLs, and what each takes")
    price: PriceRule
    request_schema: dict[str, Any] = Field(description="JSON Schema of the request body, with defaults, ranges and enums")


class Catalog(Body):
    models: list[CatalogEntry]


# -- live events ----------------------------------------------------------------------------------------------


class ProgressEvent(Body):
    request_id: str
    progress: float = Field(description="0 to 1")
    step: int | None
    steps: int | None
    loss: float | None = OMITTED_IF_NONE


# -- uploads ---------------------------------------------------------------------------------------------------


class Uploaded(Body):
    url: str = Field(description="Use it as any image (or zip) input of any endpoint, with the same key")
    content_type: str
    size: int
    expires_at: str | None


# -- webhook diagnostics -----------------------------------------------------------------------------------------


class WebhookEventView(Body):
    event_id: str
    event_type: str
    state: str
    attempts: int
    created_at: str | None
    next_attempt_at: str | None
    deliver_until: str | None
    delivered_at: str | None
    last_status_code: int | None
    last_error: str | None


class WebhookAttemptView(Body):
    time: str | None
    event_id: str
    event_type: str
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookLog(Body):
    request_id: str
    webhook_url: str | None
    webhook_mode: str | None
    events: list[WebhookEventView]
    attempts: list[WebhookAttemptView]


class WebhookRedelivery(Body):
    request_id: str
    event: WebhookEventView


class Health(Body):
    status: Literal["ok"]
