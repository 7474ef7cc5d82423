"""Submitting, following, waiting for and canceling requests with the client, against the real
server and its tiny models, in both twins."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from harness import RunningServer

from imagegate_client import (
    Account,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InsufficientBalanceError,
    NoRequestIdError,
    NotFoundError,
    ProgressEvent,
    QueueStatus,
    RequestFailedError,
    Status,
)

from .support import FAST, FLUX_DEV, FLUX_DEV_I2I, FLUX_DEV_PRICE, KLEIN, KLEIN_BODY, QUICK, SLOW, RecordingTransport

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_queue_request_waits_to_a_typed_result_whose_media_downloads(client: Client) -> None:
    handle = client.submit("flux-dev", {**FAST, "seed": 11}, route=FLUX_DEV)
    assert handle.request_id is not None and handle.request_id.startswith("flux-dev_")
    result = handle.result(timeout=180)
    assert result.request_id == handle.request_id and result.model_id == "flux-dev"
    assert len(result.urls) == 1 and result.seed == 11 and result.media_type == "image/png"
    assert result.has_nsfw_concepts == [False]
    assert isinstance(result.status, QueueStatus) and result.status.status is Status.COMPLETED
    assert result.status.completed_at is not None and result.status.progress == 1.0
    assert client.download(result.urls[0]).startswith(PNG)
    assert handle.status() == result.status


def test_every_submission_carries_its_own_idempotency_key(client: Client, wire: RecordingTransport) -> None:
    first = client.submit("flux-dev", FAST, route=FLUX_DEV)
    second = client.submit("flux-dev", FAST, route=FLUX_DEV)
    keys = [e.headers.get("idempotency-key") for e in wire.to(FLUX_DEV.path)]
    assert len(keys) == 2 and all(keys) and keys[0] != keys[1]
    assert first.request_id != second.request_id
    for handle in (first, second):
        handle.result(timeout=180)


def test_a_repeated_idempotency_key_is_the_same_request_charged_once(client: Client) -> None:
    before = client.account().balance
    first = client.submit("flux-dev", FAST, route=FLUX_DEV, idempotency_key="fox-1")
    again = client.submit("flux-dev", FAST, route=FLUX_DEV, idempotency_key="fox-1")
    assert again.request_id == first.request_id
    first.result(timeout=180)
    assert client.account().balance == before - FLUX_DEV_PRICE


def test_events_follow_a_request_from_queued_to_its_final_status(client: Client) -> None:
    handle = client.submit("flux-dev", SLOW, route=FLUX_DEV)
    events = list(handle.events(timeout=180))
    statuses = [e.status for e in events if isinstance(e, QueueStatus)]
    assert statuses[-1] is Status.COMPLETED and statuses == sorted(set(statuses), key=statuses.index)
    assert isinstance(events[-1], QueueStatus) and events[-1].output is not None
    progress = [e.progress for e in events if isinstance(e, ProgressEvent)]
    assert progress == sorted(progress)


def test_subscribe_reports_progress_until_the_result(client: Client) -> None:
    seen: list[ProgressEvent] = []
    result = client.subscribe("flux-dev", SLOW, route=FLUX_DEV, on_progress=seen.append, timeout=180)
    assert result.urls and all(0 <= e.progress <= 1 for e in seen)
    assert seen and seen[-1].request_id == result.request_id


def test_a_canceled_queued_request_ends_canceled_uncharged_and_its_result_raises(client: Client) -> None:
    before = client.account().balance
    running = client.submit("flux-dev", SLOW, route=FLUX_DEV)  # keeps the one worker busy
    queued = client.submit("flux-dev", FAST, route=FLUX_DEV)
    state = queued.cancel()
    assert state.status is Status.CANCELED and state.request_id == queued.request_id
    with pytest.raises(RequestFailedError) as failed:
        queued.result(timeout=30)
    assert failed.value.state is Status.CANCELED and failed.value.request_id == queued.request_id
    assert running.cancel().status in (Status.PROCESSING, Status.CANCELED, Status.COMPLETED)
    final = list(client.handle(running.id).events(timeout=120))[-1]
    assert isinstance(final, QueueStatus) and final.status in (Status.CANCELED, Status.COMPLETED)
    charged = FLUX_DEV_PRICE if final.status is Status.COMPLETED else Decimal(0)
    assert client.account().balance == before - charged


def test_a_failed_request_raises_with_its_final_status(client: Client) -> None:
    handle = client.submit("flux-dev-i2i", {**FAST, "image_url": "http://127.0.0.1:9/missing.png"}, route=FLUX_DEV_I2I)
    with pytest.raises(RequestFailedError) as failed:
        handle.result(timeout=120)
    assert failed.value.state is Status.FAILED and failed.value.status is not None
    assert "image_url" in (failed.value.error or "")


def test_a_synchronous_route_answers_a_finished_handle_without_a_request_id(client: Client) -> None:
    handle = client.submit("flux-2-klein-4b", KLEIN_BODY, route=KLEIN)
    assert handle.request_id is None
    result = handle.result()
    assert result.request_id is None and client.download(result.urls[0]).startswith(PNG)
    with pytest.raises(NoRequestIdError):
        handle.status()
    with pytest.raises(NoRequestIdError):
        handle.cancel()


def test_refusals_are_typed_errors_naming_the_field(server: RunningServer, client: Client, api_key: str) -> None:
    with pytest.raises(BadRequestError) as bad:
        client.submit("flux-dev", {**FAST, "num_inference_steps": 500}, route=FLUX_DEV)
    assert bad.value.status_code == 400 and bad.value.field == "num_inference_steps"
    with pytest.raises(NotFoundError):
        client.handle("flux-dev_0000").status()
    with Client(server.base_url, "ig_not_a_key") as stranger, pytest.raises(AuthenticationError):
        stranger.account()
    with Client(server.base_url, server.create_key("0.01")) as poor, pytest.raises(InsufficientBalanceError) as broke:
        poor.submit("flux-dev", FAST, route=FLUX_DEV)
    assert str(FLUX_DEV_PRICE) in broke.value.message


def test_the_account_is_typed(client: Client) -> None:
    account = client.account()
    assert isinstance(account, Account) and account.currency == "USD"
    assert account.balance == Decimal("100") and account.key_id.startswith("key_")


def test_the_async_twin_does_the_same(server: RunningServer, api_key: str) -> None:
    async def scenario() -> dict[str, Any]:
        progress: list[ProgressEvent] = []

        async def on_progress(event: ProgressEvent) -> None:
            progress.append(event)

        async with AsyncClient(server.base_url, api_key, retries=QUICK, poll_interval=0.2) as client:
            account = await client.account()
            result = await client.subscribe("flux-dev", SLOW, route=FLUX_DEV, on_progress=on_progress, timeout=180)
            handle = await client.submit("flux-dev", FAST, route=FLUX_DEV)
            events = [event async for event in handle.events(timeout=180)]
            status = await handle.status()
            sync_handle = await client.submit("flux-2-klein-4b", KLEIN_BODY, route=KLEIN)
            sync_result = await sync_handle.result()
            image = await client.download(sync_result.urls[0])
            return {"account": account, "result": result, "events": events, "status": status, "progress": progress, "image": image}

    got = asyncio.run(scenario())
    assert got["account"].balance == Decimal("100")
    assert got["result"].urls and got["progress"] and got["progress"][-1].request_id == got["result"].request_id
    assert got["events"][-1] == got["status"] and got["status"].status is Status.COMPLETED
    assert got["image"].startswith(PNG)
