"""Random bodies, content types and headers posted to the running server: never a 5xx.

The server has no worker (`idle_server`), so whatever passes validation is queued and stays
queued. Every 4xx outside the dojo protocol must name a field and start its message with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import RunningServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagegate.catalog import MODELS
from imagegate.jobs.store import JobStore

from .jsonish import field_dicts, field_names, json_values, valid_bodies
from .support import SUB, server_db

ROUTES = {
    "/flux-dev/v1/dev/textToImage": MODELS["flux-dev"].schema,
    "/p-image/v1/p-image-edit/generate": MODELS["p-image"].schema,
    "/p-image-upscale/v1/p-image-upscale/generate": MODELS["p-image-upscale"].schema,
    "/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate": MODELS["flux-kontext-restore-image"].schema,
    "/pixelforge-relighting-api/v1/relighting/generate": MODELS["pixelforge-relighting-api"].schema,
    "/api/v1/models/boogu-image-edit/run": MODELS["boogu-image-edit"].routes[1].schema,
}
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "application/problem+json", "text/plain", "application/x-www-form-urlencoded", "", "*/*", "application/json; charset=latin-1"]


@pytest.fixture(scope="module")
def fuzz_client(idle_server: RunningServer) -> Iterator[tuple[httpx.Client, str]]:
    key = idle_server.create_key("5", name="http-fuzz")
    with idle_server.client(timeout=30) as client:
        yield client, key


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(sorted(ROUTES)))
    schema = ROUTES[path]
    kind = draw(st.sampled_from(["valid", "swapped", "fields", "json", "bytes"]))
    if kind == "bytes":
        content = draw(st.binary(max_size=200))
    else:
        if kind == "valid":
            value: Any = draw(valid_bodies(schema))
        elif kind == "swapped":
            value = {**draw(valid_bodies(schema)), draw(st.sampled_from(field_names(schema))): draw(json_values())}
        elif kind == "fields":
            value = draw(field_dicts(schema))
        else:
            value = draw(json_values())
        if isinstance(value, dict) and value.get("sync_mode") is True:
            # With no worker a synchronous request can only time out (504, by design); that
            # path costs half a second a try and is covered elsewhere.
            value["sync_mode"] = False
        # allow_nan: NaN and Infinity literals are part of what clients send by mistake.
        text = json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans()))
        content = text.encode("utf-8", "surrogatepass")
    headers: dict[str, str] = {}
    content_type = draw(st.one_of(st.just("application/json"), st.sampled_from(CONTENT_TYPES)))
    if content_type is not None:
        headers["Content-Type"] = content_type
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)  # h11 refuses padded values
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.one_of(printable, st.just("")))
    if draw(st.integers(0, 4)) == 0:
        headers["X-Webhook-URL"] = draw(st.one_of(printable, st.sampled_from(["https://hooks.test/x", "http://127.0.0.1:9/x", "ftp://x"])))
        headers["X-Webhook-Mode"] = draw(st.one_of(printable, st.sampled_from(["terminal", "sync", "SYNC"])))
    return path, content, headers


def auth(path: str, key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if path.startswith("/api/v1/") else {SUB: key}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_random_requests_never_get_a_server_error(fuzz_client: tuple[httpx.Client, str], request: tuple[str, bytes, dict[str, str]]) -> None:
    client, key = fuzz_client
    path, content, headers = request
    r = client.post(path, content=content, headers={**headers, **auth(path, key)})
    event(f"HTTP {r.status_code}")
    assert r.status_code < 500, (path, content[:300], headers, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict)
    if r.status_code in (400, 415):
        if path.startswith("/api/v1/"):
            assert body["error"]["code"] == "invalid_request" and body["error"]["message"], body
        elif "field" in body:
            assert body["field"] and body["message"].startswith(body["field"] + " "), body
        else:  # the only 400 without a field: a model switched off, which none is here
            raise AssertionError(body)
    elif r.status_code == 409:  # the same Idempotency-Key with another body
        assert "Idempotency-Key" in headers and "Idempotency-Key" in r.text, body
    elif r.status_code not in (200, 202, 402):
        raise AssertionError((r.status_code, body))


def test_server_is_healthy_and_wallets_balanced_after_fuzzing(fuzz_client: tuple[httpx.Client, str], idle_server: RunningServer) -> None:
    client, key = fuzz_client
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.post("/flux-dev/v1/dev/textToImage", json={"prompt": "still here"}, headers={SUB: key})
    assert r.status_code in (202, 402), r.text
    store = JobStore(server_db(idle_server))
    try:
        for key_id, balance_micros, ledger in store.keys.balances():
            assert balance_micros == ledger, key_id
    finally:
        store.dispose()
