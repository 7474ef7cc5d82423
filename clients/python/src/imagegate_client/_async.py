"""The asyncio client: :class:`AsyncClient` and the :class:`AsyncHandle` of a submitted request,
the twins of :mod:`imagegate_client._sync` (same operations, same behaviour, awaited)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from os import PathLike
from typing import Any, TypeVar

import httpx

from imagegate_client import _flows as flows
from imagegate_client._core import DEFAULT_STREAM_TIMEOUT, DEFAULT_TIMEOUT, Core, HandleBase, Submitted
from imagegate_client.models import Account, CatalogEntry, CatalogRoute, ProgressEvent, QueueStatus, Result
from imagegate_client.retries import RetryPolicy

T = TypeVar("T")


class AsyncClient:
    """imagegate from asyncio: ``await AsyncClient(base_url, api_key).run(model_id, input)``.

    Takes the same arguments as :class:`~imagegate_client.Client`; ``transport`` is an
    ``httpx.AsyncBaseTransport``. ``on_progress`` callbacks may be plain functions or coroutines.
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = Core(base_url, api_key, timeout, retries or RetryPolicy(), poll_interval, stream_timeout)
        self._http = httpx.AsyncClient(transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- operations --------------------------------------------------------------------------------

    async def run(self, model_id: str, input: dict[str, Any], *, timeout: float | None = None, **options: Any) -> Result:
        """See :meth:`Client.run <imagegate_client.Client.run>`."""
        return await self.subscribe(model_id, input, timeout=timeout, **options)

    async def subscribe(
        self,
        model_id: str,
        input: dict[str, Any],
        *,
        on_progress: Callable[[ProgressEvent], Any] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Result:
        """See :meth:`Client.subscribe <imagegate_client.Client.subscribe>`."""
        return await self._drive(flows.run(self._core, model_id, input, timeout=timeout, on_progress=on_progress, **options))

    async def submit(
        self,
        model_id: str,
        input: dict[str, Any],
        *,
        route: str | CatalogRoute | None = None,
        webhook_url: str | None = None,
        webhook_mode: str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncHandle:
        """See :meth:`Client.submit <imagegate_client.Client.submit>`."""
        job = await self._drive(
            flows.submit(
                self._core, model_id, input, route=route, webhook_url=webhook_url, webhook_mode=webhook_mode,
                idempotency_key=idempotency_key,
            )
        )
        return AsyncHandle(self, job)

    def handle(self, request_id: str) -> AsyncHandle:
        return AsyncHandle(self, Submitted.of(request_id))

    async def upload(
        self, source: str | PathLike[str] | bytes, *, filename: str | None = None, content_type: str | None = None
    ) -> str:
        return await self._drive(flows.upload(self._core, source, filename, content_type))

    async def account(self) -> Account:
        return await self._drive(flows.account(self._core))

    async def models(self) -> list[CatalogEntry]:
        return await self._drive(flows.models(self._core))

    async def download(self, url: str) -> bytes:
        return await self._drive(flows.download(self._core, url))

    # -- the driver --------------------------------------------------------------------------------

    async def _drive(self, flow: flows.Flow[T]) -> T:
        out: list[T] = []
        async for _ in self._steps(flow, out):
            pass
        return out[0]

    async def _steps(self, flow: flows.Flow[T], out: list[T] | None = None) -> AsyncIterator[Any]:
        """Carry out what ``flow`` asks for; yield its events to the caller; its value into ``out``."""
        runner = flows.Runner(flow)
        lines: dict[httpx.Response, AsyncIterator[str]] = {}
        try:
            for step in runner:
                if not isinstance(step, flows.Effect):
                    yield step
                    continue
                try:
                    runner.answer(await self._do(step, lines))
                except httpx.TransportError as exc:
                    runner.fail(exc)
            if out is not None:
                out.append(runner.value)
        finally:
            flow.close()
            for response in lines:
                await response.aclose()

    async def _do(self, step: flows.Effect, lines: dict[httpx.Response, AsyncIterator[str]]) -> Any:
        if isinstance(step, flows.Send):
            response = await self._http.send(step.request, stream=step.stream, follow_redirects=step.follow_redirects)
            if step.stream:
                if response.is_success:
                    lines[response] = response.aiter_lines()
                else:
                    await response.aread()
                    await response.aclose()
            return response
        if isinstance(step, flows.ReadLine):
            return await anext(lines[step.response], None)
        if isinstance(step, flows.Close):
            lines.pop(step.response, None)
            await step.response.aclose()
            return None
        if isinstance(step, flows.Sleep):
            await asyncio.sleep(step.seconds)
            return None
        outcome = step.callback(step.event)
        return await outcome if inspect.isawaitable(outcome) else outcome


class AsyncHandle(HandleBase):
    """A submitted request, awaited: see :class:`~imagegate_client.Handle`."""

    def __init__(self, client: AsyncClient, job: Submitted) -> None:
        super().__init__(job)
        self._client = client

    async def status(self) -> QueueStatus:
        return await self._client._drive(flows.status(self._client._core, self.id))

    async def cancel(self) -> QueueStatus:
        return await self._client._drive(flows.cancel(self._client._core, self.id))

    def events(self, *, timeout: float | None = None) -> AsyncIterator[QueueStatus | ProgressEvent]:
        return self._client._steps(flows.follow(self._client._core, self.id, flows.emit_all, timeout))

    async def result(
        self, *, timeout: float | None = None, on_progress: Callable[[ProgressEvent], Any] | None = None
    ) -> Result:
        return await self._client._drive(
            flows.result(self._client._core, self.job, timeout=timeout, on_progress=on_progress)
        )
