"""Typed results: dataclasses mirroring the server's protocol models, field for field.

Each class has the name of the schema it mirrors in the server's ``/openapi.json``, and the test
suite checks the two against each other, so they cannot drift. Decoding is strict about what the API
promises (a missing field, a wrong type: :class:`~imagegate_client.errors.UnexpectedResponseError`)
and ignores fields it does not know, so a newer server does not break an older client.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from imagegate_client.errors import UnexpectedResponseError

T = TypeVar("T")


class Status(str, enum.Enum):
    """A request's status, the same in every protocol's status object."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the request's fault (an unreadable input): charged
    ERROR = "ERROR"  # the server's fault: not charged
    CANCELED = "CANCELED"  # not charged

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.PROCESSING)


class Protocol(str, enum.Enum):
    """How a route answers a submission (README "Protocols"): the ones the client submits through.
    The catalog lists others too (``openai``: the OpenAI-compatible images API)."""

    QUEUE = "queue"  # 202 {request_id, status, polling_url}
    SYNC_OUTPUT = "sync-output"  # 200 {"output": url} once finished
    SYNC_URL = "sync-url"  # 200 {"url": url} once finished
    BATCH = "batch"  # 202 {requestId, ...}, or 200 {status, output, completedAt} when quick
    DOJO = "dojo"  # 200 {jobId, status, statusUrl, creditCost, creditsRemaining}


# -- the status object -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueOutput:
    media_url: list[str]  # media URLs, or base64 data: URIs for sync_mode answers
    media_type: str | None
    has_nsfw_concepts: list[bool]
    seed: int | None


@dataclass(frozen=True)
class QueueStatus:
    """A request's status object (``GET /v2/requests/status/{request_id}``, the events stream,
    queue-protocol webhooks), whichever protocol the request was made through."""

    request_id: str
    status: Status
    model_id: str
    error: str | None
    output: QueueOutput | None
    progress: float
    created_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    queue_position: int | None = None  # while queued: how many requests are ahead


# -- submission answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSubmitted:
    request_id: str
    status: Status
    polling_url: str


@dataclass(frozen=True)
class SyncOutput:
    output: str


@dataclass(frozen=True)
class SyncUrl:
    url: str


@dataclass(frozen=True)
class BatchQueued:
    requestId: str  # noqa: N815 (the wire's name)
    status: str
    message: str
    pollingEndpoint: str  # noqa: N815
    pollingInstructions: str  # noqa: N815


@dataclass(frozen=True)
class BatchStatus:
    status: str  # queued | processing | completed | failed | error | canceled
    output: str | None
    completedAt: int | None  # noqa: N815 (epoch milliseconds)
    error: str | None = None


@dataclass(frozen=True)
class DojoSubmitted:
    jobId: str  # noqa: N815
    status: str
    statusUrl: str  # noqa: N815
    creditCost: float  # noqa: N815
    creditsRemaining: float  # noqa: N815


# -- the account -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    key_id: str
    name: str
    balance: Decimal  # USD
    currency: str


# -- the catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRoute:
    """One way in to a model: ``Client.submit(model_id, input, route=CatalogRoute(...))`` uses it
    without asking the server's catalog."""

    method: str
    path: str
    protocol: str  # a Protocol value, or one the client does not submit through
    auth_header: str  # the header the key goes in (Authorization takes "Bearer <key>")


@dataclass(frozen=True)
class PriceRule:
    description: str
    usd_for_defaults: Decimal | None
    per_image: bool
    varies: bool
    source: str  # catalog | operator | default


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # the catalog id, what run() and submit() take
    model_id: str  # the id in request ids and status objects
    title: str
    family: str
    task: str
    routes: list[CatalogRoute]
    inputs: dict[str, str]  # fields that take image (or zip) URLs, and what each takes
    price: PriceRule
    request_schema: dict[str, Any]  # JSON Schema of the request body


@dataclass(frozen=True)
class Catalog:
    models: list[CatalogEntry]


# -- live events and uploads -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    request_id: str
    progress: float  # 0 to 1
    step: int | None
    steps: int | None
    loss: float | None = None  # trainers only


@dataclass(frozen=True)
class Uploaded:
    url: str  # works as any image (or zip) input of any endpoint, with the same key
    content_type: str
    size: int
    expires_at: datetime | None


# -- the client's own view of a finished request -----------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What a finished request produced, whichever protocol its route speaks."""

    model_id: str
    urls: list[str]  # media URLs (base64 data: URIs when the input asked for sync_mode)
    request_id: str | None = None  # None where the route answers synchronously without one
    seed: int | None = None
    media_type: str | None = None
    has_nsfw_concepts: list[bool] = field(default_factory=list)
    status: QueueStatus | None = None  # the final status object, where the request has an id

    @classmethod
    def from_status(cls, status: QueueStatus) -> Result:
        out = status.output
        if out is None:
            return cls(model_id=status.model_id, urls=[], request_id=status.request_id, status=status)
        return cls(
            model_id=status.model_id,
            urls=list(out.media_url),
            request_id=status.request_id,
            seed=out.seed,
            media_type=out.media_type,
            has_nsfw_concepts=list(out.has_nsfw_concepts),
            status=status,
        )


# -- decoding ----------------------------------------------------------------------------------------


def decode(cls: type[T], value: Any) -> T:
    """``value`` (decoded JSON) as an instance of the dataclass ``cls``."""
    return _decode(cls, value, cls.__name__)  # type: ignore[return-value]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        concrete = [a for a in args if a is not type(None)]
        return _decode(concrete[0], value, where) if len(concrete) == 1 else value
    if origin is list:
        (item,) = get_args(tp)
        _expect(value, list, where)
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _key, item = get_args(tp)
        _expect(value, dict, where)
        return {k: _decode(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        _expect(value, dict, where)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(_hints(tp)[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UnexpectedResponseError(f"{where} has no field {f.name!r}")
        return tp(**kwargs)
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise UnexpectedResponseError(f"{where} is {value!r}, not one of {[m.value for m in tp]}") from exc
    if tp is Decimal:
        try:
            return Decimal(_expect(value, str, where))
        except InvalidOperation as exc:
            raise UnexpectedResponseError(f"{where} is {value!r}, not a decimal amount") from exc
    if tp is datetime:
        try:
            return datetime.fromisoformat(_expect(value, str, where).replace("Z", "+00:00"))
        except ValueError as exc:
            raise UnexpectedResponseError(f"{where} is {value!r}, not an ISO 8601 time") from exc
    if tp is float:
        # JSON has one number type: 1 is a valid float; True is not.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UnexpectedResponseError(f"{where} is {value!r}, not a number")
    if tp is int and isinstance(value, bool):
        raise UnexpectedResponseError(f"{where} is {value!r}, not an integer")
    return _expect(value, tp, where)


def _expect(value: Any, tp: type, where: str) -> Any:
    if not isinstance(value, tp):
        raise UnexpectedResponseError(f"{where} is {value!r}, not {tp.__name__}")
    return value
