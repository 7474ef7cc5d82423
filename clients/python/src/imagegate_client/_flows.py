"""Every operation of the client, written once for both twins.

An operation is a generator that yields what it needs done — send a request, read a line of an
event stream, sleep, call the caller's callback — and is sent the outcome back (or has the
transport's exception thrown in). :class:`~imagegate_client.Client` drives it with httpx's
blocking API and :class:`~imagegate_client.AsyncClient` with its async one, so retries, waiting,
the event stream and its polling fallback behave the same in both. Anything else an operation
yields is an event for the caller (see :func:`follow`).
"""

from __future__ import annotations

import base64
import mimetypes
import time
import urllib.parse
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar, Union

import httpx

from imagegate_client import errors
from imagegate_client._core import (
    SYNC_PROTOCOLS,
    Core,
    Submitted,
    api_error,
    choose_route,
    finished,
    holds_answer,
    is_model_not_found,
    loads_event_data,
    read,
    submitted,
    sync_failure,
    with_read_timeout,
)
from imagegate_client.models import (
    Account,
    Catalog,
    CatalogEntry,
    CatalogRoute,
    ProgressEvent,
    Protocol,
    QueueStatus,
    Result,
    Status,
    Uploaded,
    decode,
)
from imagegate_client.retries import RETRY_STATUSES, retry_after, retryable_error
from imagegate_client.sse import SSEDecoder

T = TypeVar("T")

FILES_PATH = "/v2/files"
MODELS_PATH = "/v2/models"

# Polls start quick (most tiny requests end within a second) and slow down to the poll interval.
FIRST_POLL_SECONDS = 0.1
POLL_GROWTH = 1.5


# -- what an operation asks its driver for -----------------------------------------------------------


class Effect:
    """Something an operation needs its driver to do."""


@dataclass(frozen=True)
class Send(Effect):
    """Send ``request``; answers the response (its body read, unless ``stream`` and a success)."""

    request: httpx.Request
    stream: bool = False
    follow_redirects: bool = False


@dataclass(frozen=True)
class ReadLine(Effect):
    """The next line of a streamed response, or None at its end."""

    response: httpx.Response


@dataclass(frozen=True)
class Close(Effect):
    response: httpx.Response


@dataclass(frozen=True)
class Sleep(Effect):
    seconds: float


@dataclass(frozen=True)
class Notify(Effect):
    """Call the caller's callback with ``event`` (awaited when it returns an awaitable)."""

    callback: Callable[[Any], Any]
    event: Any


Event = Union[QueueStatus, ProgressEvent]
Flow = Generator[Any, Any, T]
Emit = Callable[[Event], Flow[None]]


class Runner:
    """Steps an operation for a driver. Iterating gives what it asks for next (an :class:`Effect`,
    or an event for the caller); the driver answers each effect with :meth:`answer` or, when
    carrying it out raised, :meth:`fail`. Once iteration stops, ``value`` is what it returned."""

    def __init__(self, flow: Flow[Any]) -> None:
        self.flow = flow
        self.value: Any = None
        self._answer: Any = None
        self._error: BaseException | None = None

    def __iter__(self) -> Runner:
        return self

    def __next__(self) -> Any:
        answer, error = self._answer, self._error
        self._answer, self._error = None, None
        try:
            return self.flow.throw(error) if error is not None else self.flow.send(answer)
        except StopIteration as stop:
            self.value = stop.value
            raise StopIteration from None

    def answer(self, value: Any) -> None:
        self._answer = value

    def fail(self, error: BaseException) -> None:
        self._error = error


# -- calls ---------------------------------------------------------------------------------------------


def call(
    core: Core, request: httpx.Request, *, idempotent: bool = True, stream: bool = False, follow_redirects: bool = False
) -> Flow[httpx.Response]:
    """Send ``request`` under the retry policy; the response, or the error it stands for."""
    attempt = 0
    while True:
        try:
            response: httpx.Response = yield Send(request, stream, follow_redirects)
        except httpx.TransportError as exc:
            delay = core.retries.delay(attempt) if retryable_error(exc, idempotent=idempotent) else None
            if delay is None:
                cls = errors.APITimeoutError if isinstance(exc, httpx.TimeoutException) else errors.APIConnectionError
                raise cls(f"{request.method} {request.url}: {exc or type(exc).__name__}") from exc
        else:
            wait = retry_after(response)
            delay = core.retries.delay(attempt, wait) if response.status_code in RETRY_STATUSES else None
            if delay is None:
                if response.is_error:
                    raise api_error(response, wait)
                return response
        yield Sleep(delay)
        attempt += 1


def get(core: Core, path: str, cls: type[T]) -> Flow[T]:
    response = yield from call(core, core.request("GET", path))
    return read(response, cls)


def account(core: Core) -> Flow[Account]:
    return (yield from get(core, "/v2/account", Account))


def models(core: Core) -> Flow[list[CatalogEntry]]:
    catalog = yield from get(core, MODELS_PATH, Catalog)
    core.catalog = {entry.id: entry for entry in catalog.models}
    return catalog.models


def download(core: Core, url: str) -> Flow[bytes]:
    """The bytes behind a media URL (base64 ``data:`` URIs are decoded here)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)
    # Media URLs are capabilities (or presigned object-store URLs): the API key stays home.
    response = yield from call(core, core.request("GET", url, auth_header=None), follow_redirects=True)
    return response.content


# -- uploads -------------------------------------------------------------------------------------------


def upload(core: Core, source: str | PathLike[str] | bytes, filename: str | None = None, content_type: str | None = None) -> Flow[str]:
    """Upload a file (a path) or bytes; its URL. The server checks what it is, whatever its name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), filename or "upload"
    else:
        path = Path(source)
        data, name = path.read_bytes(), filename or path.name
    kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    request = core.request("POST", FILES_PATH, files={"file": (name, data, kind)})
    # Not idempotent: a second upload of the same bytes would be a second file.
    response = yield from call(core, request, idempotent=False)
    return read(response, Uploaded).url


def _paths(value: Any) -> Iterator[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths(item)


def _replace_paths(value: Any, urls: dict[Path, str]) -> Any:
    if isinstance(value, Path):
        return urls[value]
    if isinstance(value, dict):
        return {k: _replace_paths(v, urls) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_paths(v, urls) for v in value]
    return value


def with_uploads(core: Core, input: Any) -> Flow[Any]:
    """``input`` with every local :class:`~pathlib.Path` in it uploaded and replaced by its URL."""
    urls: dict[Path, str] = {}
    for path in _paths(input):
        if path not in urls:
            urls[path] = yield from upload(core, path)
    return _replace_paths(input, urls) if urls else input


# -- submitting ----------------------------------------------------------------------------------------


def route_for(core: Core, model_id: str, route: str | CatalogRoute | None) -> Flow[CatalogRoute]:
    if isinstance(route, CatalogRoute):
        return route
    if core.catalog is None or model_id not in core.catalog:
        yield from models(core)
    assert core.catalog is not None
    entry = core.catalog.get(model_id)
    if entry is None:
        raise errors.ModelNotFoundError(model_id)
    return choose_route(entry, route)


def submit(
    core: Core,
    model_id: str,
    input: Any,
    *,
    route: str | CatalogRoute | None = None,
    webhook_url: str | None = None,
    webhook_mode: str | None = None,
    idempotency_key: str | None = None,
    wait: float | None = None,
) -> Flow[Submitted]:
    """Submit ``input`` to the model's route (its preferred one, found in the catalog, unless
    ``route`` names one). An answer that waits for the request to end (synchronous routes, batch,
    ``sync_mode``) is waited for up to ``wait`` seconds (None: as long as the server holds it)."""
    chosen = yield from route_for(core, model_id, route)
    body = yield from with_uploads(core, input)
    # The key makes the submission safe to send again: the server answers a repeat with the
    # original request, so a retry after a lost answer never runs (or charges) twice.
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    if webhook_url:
        headers["X-Webhook-URL"] = webhook_url
        if webhook_mode:
            headers["X-Webhook-Mode"] = webhook_mode
    protocol = Protocol(chosen.protocol)
    # An answer that waits for the request waits as long as the server holds it (the server
    # bounds it), or ``wait``.
    holds = holds_answer(protocol, body)
    timeout = with_read_timeout(core.timeout, wait) if holds else None
    request = core.request(chosen.method, chosen.path, auth_header=chosen.auth_header, headers=headers, json=body, timeout=timeout)
    try:
        response = yield from call(core, request)
    except errors.APITimeoutError as exc:
        if holds and wait is not None:
            raise errors.WaitTimeoutError(None, wait) from exc
        raise
    except errors.APIError as exc:
        if is_model_not_found(exc):
            raise errors.ModelNotFoundError(model_id, exc.message) from exc
        failure = sync_failure(model_id, exc) if protocol in SYNC_PROTOCOLS else None
        if failure is None:
            raise
        return failure
    return submitted(model_id, chosen, response)


def _request_path(request_id: str, suffix: str = "", prefix: str = "") -> str:
    return f"/v2/requests/{prefix}{urllib.parse.quote(request_id, safe='')}{suffix}"


def status(core: Core, request_id: str) -> Flow[QueueStatus]:
    return (yield from get(core, _request_path(request_id, prefix="status/"), QueueStatus))


def cancel(core: Core, request_id: str) -> Flow[QueueStatus]:
    """200 once the request has ended (CANCELED, or whatever it ended as before); 202 while a
    running request is still stopping. Either way the status object."""
    response = yield from call(core, core.request("PUT", _request_path(request_id, "/cancel")))
    return read(response, QueueStatus)


# -- following a request -------------------------------------------------------------------------------


class Seen:
    """What the caller has been told so far, so a switch from the stream to polling repeats nothing."""

    def __init__(self) -> None:
        self.status: Status | None = None
        self.progress: float | None = None

    def new(self, event: Event) -> bool:
        if isinstance(event, ProgressEvent):
            fresh = event.progress != self.progress
        else:
            fresh = event.status is not self.status or event.status.terminal
            self.status = event.status
        self.progress = event.progress
        return fresh

    def from_poll(self, state: QueueStatus) -> Event | None:
        """The event a poll's answer makes, if it tells anything new."""
        event: Event = state
        if state.status is self.status:
            if state.status is not Status.PROCESSING:
                return None
            # Polls carry the fraction only; steps come with the event stream.
            event = ProgressEvent(request_id=state.request_id, progress=state.progress, step=None, steps=None)
        return event if self.new(event) else None


def _check_deadline(request_id: str, deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and timeout is not None and time.monotonic() >= deadline:
        raise errors.WaitTimeoutError(request_id, timeout)


def emit_all(event: Event) -> Flow[None]:
    """Hand every event to the caller (the driver yields what is not an effect)."""
    yield event


def emit_progress(callback: Callable[[ProgressEvent], Any] | None) -> Emit:
    def emit(event: Event) -> Flow[None]:
        if callback is not None and isinstance(event, ProgressEvent):
            yield Notify(callback, event)

    return emit


def follow(core: Core, request_id: str, emit: Emit, timeout: float | None = None) -> Flow[QueueStatus]:
    """Follow a request to its end, handing each status change and progress update to ``emit``;
    the final status object. Live events first; where the server has none (or the stream breaks,
    or a proxy holds it back) the status is polled instead."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = Seen()
    final = yield from _stream(core, request_id, seen, emit, deadline, timeout)
    if final is not None:
        return final
    return (yield from _poll(core, request_id, seen, emit, deadline, timeout))


def _stream(
    core: Core, request_id: str, seen: Seen, emit: Emit, deadline: float | None, timeout: float | None
) -> Flow[QueueStatus | None]:
    request = core.request(
        "GET",
        _request_path(request_id, "/events"),
        headers={"Accept": "text/event-stream"},
        timeout=with_read_timeout(core.timeout, core.stream_timeout),
    )
    try:
        response = yield from call(core, request, stream=True)
    except (errors.APIError, errors.APIConnectionError):
        return None  # no event stream here (an older server): polling tells the rest
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        yield Close(response)
        return None
    decoder = SSEDecoder()
    try:
        while True:
            _check_deadline(request_id, deadline, timeout)
            line = yield ReadLine(response)
            if line is None:
                break
            sse = decoder.feed(line)
            event = None if sse is None else _event(sse.event, sse.data)
            if event is None or not seen.new(event):
                continue
            yield from emit(event)
            if isinstance(event, QueueStatus) and event.status.terminal:
                return event
    except httpx.TransportError:
        pass  # the stream broke or fell silent: polling takes over
    yield Close(response)
    return None


def _event(kind: str, data: str) -> Event | None:
    if kind in ("status", "done"):
        return decode(QueueStatus, loads_event_data(data))
    if kind == "progress":
        return decode(ProgressEvent, loads_event_data(data))
    return None


def _poll(
    core: Core, request_id: str, seen: Seen, emit: Emit, deadline: float | None, timeout: float | None
) -> Flow[QueueStatus]:
    interval = FIRST_POLL_SECONDS
    while True:
        state = yield from status(core, request_id)
        event = seen.from_poll(state)
        if event is not None:
            yield from emit(event)
        if state.status.terminal:
            return state
        _check_deadline(request_id, deadline, timeout)
        pause = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        yield Sleep(pause)
        interval = min(interval * POLL_GROWTH, core.poll_interval)


def result(
    core: Core, job: Submitted, *, timeout: float | None = None, on_progress: Callable[[ProgressEvent], Any] | None = None
) -> Flow[Result]:
    """Wait for a submitted request; its result, or :class:`RequestFailedError`."""
    outcome = job.outcome
    if outcome is None:
        assert job.request_id is not None
        outcome = finished((yield from follow(core, job.request_id, emit_progress(on_progress), timeout)))
    if isinstance(outcome, errors.RequestFailedError):
        raise outcome
    return outcome


def run(
    core: Core,
    model_id: str,
    input: Any,
    *,
    timeout: float | None = None,
    on_progress: Callable[[ProgressEvent], Any] | None = None,
    **options: Any,
) -> Flow[Result]:
    """Submit and wait, ``timeout`` seconds for the two together."""
    started = time.monotonic()
    job = yield from submit(core, model_id, input, wait=timeout, **options)
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    return (yield from result(core, job, timeout=left, on_progress=on_progress))
