"""Hostile request ids and strings that one database stores and another refuses.

SQLite stores anything; PostgreSQL text refuses NUL, and no driver can encode a lone surrogate.
So the same requests go to a SQLite-backed and (where one is reachable) a PostgreSQL-backed
server: an id no job can have is simply not found (404), a webhook URL with control characters
is a 400 naming the field, and a prompt with a NUL is stored like any other text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import RunningServer, start_server

from .support import SECRET, SUB

KONTEXT = "/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate"


@pytest.fixture(scope="module")
def pg_idle_server(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[RunningServer]:
    srv = start_server(
        tmp_path_factory.mktemp("pg-idle"),
        config=None,
        workers=0,
        database_url=postgres_url,
        extra_env={"IMAGEGATE_SYNC_TIMEOUT_SECONDS": "0.5", "IMAGEGATE_BATCH_WAIT_SECONDS": "0.5"},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_server(request: pytest.FixtureRequest) -> tuple[str, RunningServer, str]:
    server = request.getfixturevalue("idle_server" if request.param == "sqlite" else "pg_idle_server")
    return request.param, server, server.create_key("10", name="ids")


BAD_IDS = [
    pytest.param("a%00b", id="nul"),
    pytest.param("%ED%A0%80", id="encoded-surrogate"),
    pytest.param("%FF%FE", id="invalid-utf8"),
    pytest.param("x" * 5000, id="5000-chars"),
    pytest.param("..%2F..%2Fetc%2Fpasswd", id="traversal"),
    pytest.param("flux-dev_%27%20OR%20%271%27%3D%271", id="sql-quote"),
]


@pytest.mark.parametrize("request_id", BAD_IDS)
def test_hostile_request_ids_are_not_found(db_server: tuple[str, RunningServer, str], request_id: str) -> None:
    _, server, key = db_server
    with server.client() as client:
        for method, path, headers in [
            ("GET", f"/v2/requests/status/{request_id}", {SUB: key}),
            ("PUT", f"/v2/requests/{request_id}/cancel", {SUB: key}),
            ("GET", f"/api/v1/jobs/{request_id}", {"Authorization": f"Bearer {key}"}),
        ]:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("request_id", ["a\u0000b", "\ud800", "x" * 5000, "' OR '1'='1"], ids=["nul", "lone-surrogate", "5000-chars", "sql-quote"])
def test_hostile_batch_request_ids_are_not_found(db_server: tuple[str, RunningServer, str], request_id: str) -> None:
    _, server, key = db_server
    body = json.dumps({"requestId": request_id}).encode()  # \ud800 travels as a JSON escape
    with server.client() as client:
        r = client.post("/flux-1-schnell/v1/checkStatus", content=body, headers={SECRET: key, "Content-Type": "application/json"})
        assert r.status_code == 404, r.text[:300]
        assert r.json()["message"].startswith("Request '") and r.json()["message"].endswith("not found")


def test_webhook_listing_with_a_nul_id(db_server: tuple[str, RunningServer, str]) -> None:
    kind, server, key = db_server
    with server.client() as client:
        r = client.get("/v2/requests/a%00b/webhooks", headers={SUB: key})
        assert r.status_code == 404, r.text[:300]


@pytest.mark.parametrize(
    "path, body, headers, field",
    [
        (KONTEXT, {"input_image": "https://a.test/x.png", "webhook": "https://hooks.test/\u0000"}, {}, "webhook"),
        (KONTEXT, {"input_image": "https://a.test/x.png", "webhook": "https://hooks.test/\x7f"}, {}, "webhook"),
        ("/flux-1-schnell/v1/getDataBatch", {"prompt": "x", "webhook_url": "https://hooks.test/\u0000"}, {"secret": True}, "webhook_url"),
    ],
    ids=["webhook-nul", "webhook-del", "batch-webhook-url-nul"],
)
def test_control_characters_in_webhook_urls_are_a_400(
    db_server: tuple[str, RunningServer, str], path: str, body: dict, headers: dict, field: str
) -> None:
    _, server, key = db_server
    auth = {SECRET: key} if headers.get("secret") else {SUB: key}
    with server.client() as client:
        before = client.get("/v2/account", headers={SUB: key}).json()["balance"]
        r = client.post(path, json=body, headers=auth)
        assert r.status_code == 400, r.text[:300]
        assert r.json()["field"] == field and "control characters" in r.json()["message"]
        assert client.get("/v2/account", headers={SUB: key}).json()["balance"] == before


def test_nul_in_a_prompt_is_stored_like_any_text(db_server: tuple[str, RunningServer, str]) -> None:
    _, server, key = db_server
    with server.client() as client:
        r = client.post("/flux-dev/v1/dev/textToImage", json={"prompt": "a\u0000b", "note": "\u0000"}, headers={SUB: key})
        assert r.status_code == 202, r.text[:300]
        r = client.get(f"/v2/requests/status/{r.json()['request_id']}", headers={SUB: key})
        assert r.status_code == 200 and r.json()["status"] == "QUEUED"
