"""The blocking client: :class:`Client` and the :class:`Handle` of a submitted request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from os import PathLike
from typing import Any, TypeVar

import httpx

from imagegate_client import _flows as flows
from imagegate_client._core import DEFAULT_STREAM_TIMEOUT, DEFAULT_TIMEOUT, Core, HandleBase, Submitted
from imagegate_client.models import Account, CatalogEntry, CatalogRoute, ProgressEvent, QueueStatus, Result
from imagegate_client.retries import RetryPolicy

T = TypeVar("T")


class Client:
    """imagegate from Python, blocking. ``Client(base_url, api_key)``; ``run(model_id, input)``.

    ``transport`` is the one seam: any ``httpx.BaseTransport`` (a proxy's, a mounted app's, a
    recording one) carries every request. ``retries`` says how connection failures, 429 and 503
    are retried; ``timeout`` bounds each HTTP call (not the wait for a result: see ``run``).
    Following a request polls every ``poll_interval`` seconds at most where there is no event
    stream, or once one has been silent for ``stream_timeout`` seconds (keep it above the
    server's ``events_keepalive_seconds``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: RetryPolicy | None = None,
        poll_interval: float = 2.0,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = Core(base_url, api_key, timeout, retries or RetryPolicy(), poll_interval, stream_timeout)
        self._http = httpx.Client(transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- operations --------------------------------------------------------------------------------

    def run(self, model_id: str, input: dict[str, Any], *, timeout: float | None = None, **options: Any) -> Result:
        """Submit ``input`` to the model and wait for its result (at most ``timeout`` seconds).
        Raises :class:`RequestFailedError` when it ends FAILED, ERROR or CANCELED. ``options`` are
        those of :meth:`submit`."""
        return self.subscribe(model_id, input, timeout=timeout, **options)

    def subscribe(
        self,
        model_id: str,
        input: dict[str, Any],
        *,
        on_progress: Callable[[ProgressEvent], Any] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Result:
        """:meth:`run`, calling ``on_progress`` with each progress update on the way."""
        return self._drive(flows.run(self._core, model_id, input, timeout=timeout, on_progress=on_progress, **options))

    def submit(
        self,
        model_id: str,
        input: dict[str, Any],
        *,
        route: str | CatalogRoute | None = None,
        webhook_url: str | None = None,
        webhook_mode: str | None = None,
        idempotency_key: str | None = None,
    ) -> Handle:
        """Submit ``input`` to the model (its queue route unless ``route`` names another of its
        paths, or is a route of its own) and return at once with a :class:`Handle`. Local
        :class:`~pathlib.Path` values in ``input`` are uploaded first. Models served only
        synchronously answer when done: their handle is already finished."""
        job = self._drive(
            flows.submit(
                self._core, model_id, input, route=route, webhook_url=webhook_url, webhook_mode=webhook_mode,
                idempotency_key=idempotency_key,
            )
        )
        return Handle(self, job)

    def handle(self, request_id: str) -> Handle:
        """A handle on a request submitted earlier (by any protocol), from its id."""
        return Handle(self, Submitted.of(request_id))

    def upload(self, source: str | PathLike[str] | bytes, *, filename: str | None = None, content_type: str | None = None) -> str:
        """Upload a local file (a path) or bytes; its URL, usable as any image input with this key."""
        return self._drive(flows.upload(self._core, source, filename, content_type))

    def account(self) -> Account:
        return self._drive(flows.account(self._core))

    def models(self) -> list[CatalogEntry]:
        """The server's catalog: every enabled model with its routes, price rule and request schema."""
        return self._drive(flows.models(self._core))

    def download(self, url: str) -> bytes:
        """The bytes of a result's media URL (or ``data:`` URI)."""
        return self._drive(flows.download(self._core, url))

    # -- the driver --------------------------------------------------------------------------------

    def _drive(self, flow: flows.Flow[T]) -> T:
        steps = self._steps(flow)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    def _steps(self, flow: flows.Flow[T]) -> flows.Flow[T]:
        """Carry out what ``flow`` asks for; yield its events to the caller; return its value."""
        runner = flows.Runner(flow)
        lines: dict[httpx.Response, Iterator[str]] = {}
        try:
            for step in runner:
                if not isinstance(step, flows.Effect):
                    yield step
                    continue
                try:
                    runner.answer(self._do(step, lines))
                except httpx.TransportError as exc:
                    runner.fail(exc)
            return runner.value
        finally:
            flow.close()
            for response in lines:
                response.close()

    def _do(self, step: flows.Effect, lines: dict[httpx.Response, Iterator[str]]) -> Any:
        if isinstance(step, flows.Send):
            response = self._http.send(step.request, stream=step.stream, follow_redirects=step.follow_redirects)
            if step.stream:
                if response.is_success:
                    lines[response] = response.iter_lines()
                else:
                    response.read()
                    response.close()
            return response
        if isinstance(step, flows.ReadLine):
            return next(lines[step.response], None)
        if isinstance(step, flows.Close):
            lines.pop(step.response, None)
            step.response.close()
            return None
        if isinstance(step, flows.Sleep):
            time.sleep(step.seconds)
            return None
        return step.callback(step.event)


class Handle(HandleBase):
    """A submitted request: follow it, wait for it, cancel it."""

    def __init__(self, client: Client, job: Submitted) -> None:
        super().__init__(job)
        self._client = client

    def status(self) -> QueueStatus:
        """The request's status object now."""
        return self._client._drive(flows.status(self._client._core, self.id))

    def cancel(self) -> QueueStatus:
        """Cancel the request: a queued one ends CANCELED at once, a running one stops at its next
        step (the answer may still say PROCESSING); never charged. An ended one stays as it ended."""
        return self._client._drive(flows.cancel(self._client._core, self.id))

    def events(self, *, timeout: float | None = None) -> Iterator[QueueStatus | ProgressEvent]:
        """Each status change (a :class:`QueueStatus`) and progress update (a
        :class:`ProgressEvent`) as it happens, ending with the final status object."""
        return self._client._steps(flows.follow(self._client._core, self.id, flows.emit_all, timeout))

    def result(self, *, timeout: float | None = None, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Result:
        """Wait (at most ``timeout`` seconds) for the request to end; its result. Raises
        :class:`RequestFailedError` when it ended FAILED, ERROR or CANCELED."""
        return self._client._drive(flows.result(self._client._core, self.job, timeout=timeout, on_progress=on_progress))
