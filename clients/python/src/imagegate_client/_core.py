"""What both twins share and that does no I/O: settings, building requests, reading answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from imagegate_client import errors
from imagegate_client.models import (
    BatchQueued,
    BatchStatus,
    CatalogEntry,
    CatalogRoute,
    DojoSubmitted,
    Protocol,
    QueueStatus,
    QueueSubmitted,
    Result,
    Status,
    SyncOutput,
    SyncUrl,
    decode,
)
from imagegate_client.retries import RetryPolicy

__version__ = "0.1.0"

T = TypeVar("T")

AUTHORIZATION = "Authorization"
USER_AGENT = f"imagegate-client/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The server sends a keep-alive comment every 15 s (events_keepalive_seconds); an event stream
# silent for longer than this is dead, or held back by a proxy, and the client polls instead.
DEFAULT_STREAM_TIMEOUT = 45.0

# The routes that answer only once the request has ended.
SYNC_PROTOCOLS = frozenset({Protocol.SYNC_OUTPUT, Protocol.SYNC_URL})
# The routes that may hold their answer until the request ends (batch: up to batch_wait_seconds).
HOLDING_PROTOCOLS = SYNC_PROTOCOLS | {Protocol.BATCH}

# Which of a model's routes `submit` takes when it is not told: routes that answer with a request
# id at once come first (the request can then be followed, and canceled).
PROTOCOL_PREFERENCE = (Protocol.QUEUE, Protocol.DOJO, Protocol.BATCH, Protocol.SYNC_URL, Protocol.SYNC_OUTPUT)

ERROR_CLASSES: dict[int, type[errors.APIError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    402: errors.InsufficientBalanceError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    415: errors.BadRequestError,
    429: errors.RateLimitError,
    503: errors.ServiceUnavailableError,
}

# A synchronous route answers a request that ended without a result with its id and one of these.
SYNC_FAILURES = {400: Status.FAILED, 409: Status.CANCELED, 500: Status.ERROR}
BATCH_FAILURES = {"failed": Status.FAILED, "error": Status.ERROR, "canceled": Status.CANCELED}


@dataclass
class Core:
    """One client's settings and its cache of the server's catalog."""

    base_url: str
    api_key: str
    timeout: httpx.Timeout
    retries: RetryPolicy
    poll_interval: float
    stream_timeout: float
    catalog: dict[str, CatalogEntry] | None = None

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def request(
        self,
        method: str,
        path: str,
        *,
        auth_header: str | None = AUTHORIZATION,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        **content: Any,
    ) -> httpx.Request:
        """A request to the API's ``path`` (or to an absolute URL), with the key in ``auth_header``
        (shared endpoints take any of the three headers; a model's route takes the one its
        protocol names; None sends no key)."""
        all_headers = {"User-Agent": USER_AGENT, **(auth(auth_header, self.api_key) if auth_header else {}), **(headers or {})}
        request = httpx.Request(
            method,
            self.base_url + path if path.startswith("/") else path,
            headers=all_headers,
            extensions={"timeout": (timeout or self.timeout).as_dict()},
            **content,
        )
        # Read the body now: a retry then sends the very same bytes again.
        request.read()
        return request


def auth(header: str, api_key: str) -> dict[str, str]:
    return {header: f"Bearer {api_key}" if header.lower() == AUTHORIZATION.lower() else api_key}


def holds_answer(protocol: Protocol, body: Any) -> bool:
    """Whether the submission's answer waits for the request to end (a queue route does with
    ``sync_mode``)."""
    return protocol in HOLDING_PROTOCOLS or (isinstance(body, dict) and body.get("sync_mode") is True)


def with_read_timeout(timeout: httpx.Timeout, read: float | None) -> httpx.Timeout:
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


# -- answers ----------------------------------------------------------------------------------------


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = response.text[:200] if response.content else "an empty body"
        raise errors.UnexpectedResponseError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} with {snippet!r}, not JSON"
        ) from exc


def read(response: httpx.Response, cls: type[T]) -> T:
    return decode(cls, json_body(response))


def api_error(response: httpx.Response, retry_after: float | None) -> errors.APIError:
    """The exception an error answer stands for. Each protocol's error shape is understood:
    ``{"error", "message", "field"?, "request_id"?}`` and ``{"error": {"code", "message"}}``."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message, field_name, code, request_id = response.reason_phrase or "error", None, None, None
    if isinstance(body, dict):
        detail = body.get("error")
        if isinstance(detail, dict):
            message = str(detail.get("message") or message)
            code = detail.get("code")
            field_name = detail.get("param")
        else:
            message = str(body.get("message") or detail or message)
            field_name = body.get("field")
            request_id = body.get("request_id")
    elif response.content:
        message = response.text[:200]
    status = response.status_code
    cls = ERROR_CLASSES.get(status) or (errors.ServerError if status >= 500 else errors.APIError)
    return cls(
        message, status_code=status, field=field_name, code=code, request_id=request_id, retry_after=retry_after, body=body
    )


def is_model_not_found(exc: errors.APIError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error") == "Model not found" or exc.code == "model_not_found"


# -- routes and submissions -------------------------------------------------------------------------


def choose_route(entry: CatalogEntry, path: str | None) -> CatalogRoute:
    usable = [r for r in entry.routes if r.protocol in PROTOCOL_PREFERENCE]
    if path is not None:
        for route in usable:
            if route.path == path:
                return route
        raise errors.ModelNotFoundError(entry.id, f"Model '{entry.id}' has no route {path!r}: {[r.path for r in usable]}")
    if not usable:
        raise errors.ModelNotFoundError(entry.id, f"Model '{entry.id}' has no route this client submits through")
    return min(usable, key=lambda r: PROTOCOL_PREFERENCE.index(Protocol(r.protocol)))


@dataclass(frozen=True)
class Submitted:
    """A submission as its route answered it: a request id to follow, and the outcome where the
    route answered only once the request had ended."""

    model_id: str
    request_id: str | None
    outcome: Result | errors.RequestFailedError | None = None

    @classmethod
    def of(cls, request_id: str) -> Submitted:
        """A request made earlier: request ids are ``<model id>_<UUIDv7>``."""
        return cls(request_id.rpartition("_")[0], request_id)


def finished(status: QueueStatus) -> Result | errors.RequestFailedError:
    if status.status is Status.COMPLETED:
        return Result.from_status(status)
    return errors.RequestFailedError(status.request_id, status.status, status.error, status)


def submitted(model_id: str, route: CatalogRoute, response: httpx.Response) -> Submitted:
    """Read a submission's answer in its route's protocol."""
    protocol = Protocol(route.protocol)
    if protocol is Protocol.QUEUE:
        if response.status_code == 202:
            return Submitted(model_id, read(response, QueueSubmitted).request_id)
        status = read(response, QueueStatus)  # sync_mode: the finished status object
        return Submitted(model_id, status.request_id, finished(status))
    if protocol is Protocol.DOJO:
        return Submitted(model_id, read(response, DojoSubmitted).jobId)
    if protocol is Protocol.BATCH:
        if response.status_code == 202:
            return Submitted(model_id, read(response, BatchQueued).requestId)
        batch = read(response, BatchStatus)
        if batch.status in BATCH_FAILURES:
            return Submitted(model_id, None, errors.RequestFailedError(None, BATCH_FAILURES[batch.status], batch.error))
        return Submitted(model_id, None, Result(model_id=model_id, urls=[batch.output] if batch.output else []))
    url = read(response, SyncOutput).output if protocol is Protocol.SYNC_OUTPUT else read(response, SyncUrl).url
    return Submitted(model_id, None, Result(model_id=model_id, urls=[url]))


def sync_failure(model_id: str, exc: errors.APIError) -> Submitted | None:
    """A synchronous route's error answer for a request that ran and ended without a result (it
    names the request), as opposed to a refused submission."""
    state = SYNC_FAILURES.get(exc.status_code)
    if state is None or not exc.request_id:
        return None
    return Submitted(model_id, exc.request_id, errors.RequestFailedError(exc.request_id, state, exc.message))


def loads_event_data(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise errors.UnexpectedResponseError(f"an event's data is not JSON: {data[:200]!r}") from exc


class HandleBase:
    """What both twins' handles hold: the submission, and its request id."""

    def __init__(self, job: Submitted) -> None:
        self.job = job

    @property
    def request_id(self) -> str | None:
        """None where the model's route answered synchronously, without one."""
        return self.job.request_id

    @property
    def model_id(self) -> str:
        return self.job.model_id

    @property
    def id(self) -> str:
        if self.job.request_id is None:
            raise errors.NoRequestIdError(
                f"{self.job.model_id} answered synchronously, without a request id: result() is all there is"
            )
        return self.job.request_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job.model_id} {self.job.request_id or '(synchronous)'}>"
