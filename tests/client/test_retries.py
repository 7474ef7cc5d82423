"""The client's retries against the real server: a rate limit (429 with Retry-After), a server
that is not up yet (connection refused), and a database that goes away (503 with Retry-After)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from faults.network import TcpRelay
from harness import free_port, start_server

from imagegate_client import Client, RateLimitError, RetryPolicy, ServiceUnavailableError
from imagegate_client.retries import retry_after, retryable_error

from .support import FAST, FLUX_DEV, FLUX_DEV_PRICE, QUICK, RecordingTransport

NO_RETRIES = RetryPolicy(max_retries=0)


def test_rate_limited_submissions_wait_out_retry_after_each_under_one_idempotency_key(tiny_models: Path, tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "limited", config=tiny_models, workers=0,
        extra_env={"IMAGEGATE_RATE_LIMIT_PER_SECOND": "1", "IMAGEGATE_RATE_LIMIT_BURST": "1"},
    )
    try:
        key = server.create_key("10")
        wire = RecordingTransport()
        with Client(server.base_url, key, transport=wire, retries=QUICK) as client:
            started = time.monotonic()
            handles = [client.submit("flux-dev", FAST, route=FLUX_DEV) for _ in range(3)]
            elapsed = time.monotonic() - started
            posts = wire.to(FLUX_DEV.path)
            assert [e.status for e in posts].count(202) == 3 and 429 in [e.status for e in posts]
            # A refused submission comes back with its own key; three submissions, three keys.
            for refused, retry in zip(posts, posts[1:]):
                if refused.status == 429:
                    assert retry.headers["idempotency-key"] == refused.headers["idempotency-key"]
            assert len({e.headers["idempotency-key"] for e in posts}) == 3
            assert len({h.request_id for h in handles}) == 3
            assert elapsed >= 1.5  # one token a second: the second and third each waited for one
            assert client.account().balance == Decimal("10") - 3 * FLUX_DEV_PRICE
        with Client(server.base_url, key, retries=NO_RETRIES) as impatient, pytest.raises(RateLimitError) as limited:
            for _ in range(3):
                impatient.submit("flux-dev", FAST, route=FLUX_DEV)
        assert limited.value.status_code == 429 and limited.value.retry_after is not None and limited.value.retry_after >= 1
    finally:
        server.stop()


def _key_before_serving(data_dir: Path) -> str:
    """`imagegate keys create` on the data directory a server will use."""
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "imagegate.cli", "keys", "create", "--balance", "10", "--name", "early"],
        env=env, check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return out.strip().splitlines()[-1]


def test_a_server_not_up_yet_is_retried_until_it_answers(tiny_models: Path, tmp_path: Path) -> None:
    data_dir, port = tmp_path / "late", free_port()
    key = _key_before_serving(data_dir)
    wire = RecordingTransport()
    patient = RetryPolicy(max_retries=400, base_delay=0.1, max_delay=0.5)
    with Client(f"http://127.0.0.1:{port}", key, transport=wire, retries=patient) as client, ThreadPoolExecutor(2) as pool:
        account = pool.submit(client.account)
        submission = pool.submit(client.submit, "flux-dev", FAST, route=FLUX_DEV)
        deadline = time.monotonic() + 30
        while sum(e.error is not None for e in wire.exchanges) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        server = start_server(data_dir, config=tiny_models, workers=0, port=port)
        try:
            assert account.result(timeout=180).balance in (Decimal("10"), Decimal("10") - FLUX_DEV_PRICE)
            handle = submission.result(timeout=180)
            assert handle.request_id is not None and handle.status().request_id == handle.request_id
        finally:
            server.stop()
    failed = [e for e in wire.exchanges if e.error is not None]
    assert failed and {e.error for e in failed} == {"ConnectError"}
    posts = wire.to(FLUX_DEV.path)
    assert posts[-1].status == 202 and len({e.headers["idempotency-key"] for e in posts}) == 1


def test_a_database_outage_answers_503_and_a_submission_is_retried_once_it_is_back(
    tiny_models: Path, tmp_path: Path, postgres_url: str
) -> None:
    target = sa.engine.make_url(postgres_url)
    relay = TcpRelay((target.host or "127.0.0.1", target.port or 5432))
    relayed = target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    server = start_server(tmp_path / "outage", config=tiny_models, workers=0, database_url=relayed)
    try:
        key = server.create_key("10")
        wire = RecordingTransport()
        with Client(server.base_url, key, transport=wire, retries=RetryPolicy(max_retries=10, base_delay=0.2, max_delay=2.0)) as client:
            assert client.account().balance == Decimal("10")
            relay.cut()
            with Client(server.base_url, key, retries=NO_RETRIES) as impatient, pytest.raises(ServiceUnavailableError) as down:
                impatient.account()
            assert down.value.status_code == 503 and down.value.retry_after == 2
            back = threading.Timer(1.5, relay.restore)
            back.start()
            handle = client.submit("flux-dev", FAST, route=FLUX_DEV)
            back.join()
            posts = wire.to(FLUX_DEV.path)
            assert 503 in [e.status for e in posts] and posts[-1].status == 202
            assert len({e.headers["idempotency-key"] for e in posts}) == 1
            assert handle.status().request_id == handle.request_id
            assert client.account().balance == Decimal("10") - FLUX_DEV_PRICE  # one request, held once
    finally:
        relay.restore()
        server.stop()
        relay.close()


# -- the policy itself ----------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_is_capped_and_never_undercuts_retry_after() -> None:
    policy = RetryPolicy(max_retries=6, base_delay=0.5, max_delay=4.0, max_retry_after=30.0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays if d is not None) and len(delays) > 1
    assert policy.delay(0, retry_after=7.0) == 7.0
    assert policy.delay(6) is None  # out of retries
    assert policy.delay(0, retry_after=31.0) is None  # longer than the client will wait


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    assert retry_after(httpx.Response(429, headers={"Retry-After": "2"}, request=request)) == 2.0
    later = retry_after(httpx.Response(503, headers={"Retry-After": formatdate(time.time() + 20, usegmt=True)}, request=request))
    assert later is not None and 17 <= later <= 20
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"}, request=request)) is None


def test_only_requests_that_cannot_run_twice_are_resent_after_a_broken_connection() -> None:
    refused, broken, slow = httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.ReadTimeout("slow")
    assert retryable_error(refused, idempotent=False) and not retryable_error(broken, idempotent=False)
    assert retryable_error(broken, idempotent=True)
    assert not retryable_error(slow, idempotent=True)  # the server is there, only slow
