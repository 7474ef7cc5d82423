"""The admin API through the real server: the token, the error shape, every route, pages, audit."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from harness import RunningServer, start_server, wait_status, worker_row
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerState

ADMIN_TOKEN = "admin-token-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = "/flux-dev/v1/dev/textToImage"
# A webhook target nothing listens on: its deliveries stay pending, which is all these tests need.
DEAD_WEBHOOK = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The admin token set in the environment; no worker, so jobs stay queued."""
    srv = start_server(
        tmp_path_factory.mktemp("admin"), config=None, workers=0, extra_env={"IMAGEGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    yield srv
    srv.stop()


@pytest.fixture()
def admin(admin_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{admin_server.base_url}/admin/v1", headers=AUTH, timeout=60) as client:
        yield client


def store_of(server: RunningServer) -> JobStore:
    return JobStore(f"sqlite:///{Path(server.env['IMAGEGATE_DATA_DIR']) / 'imagegate.db'}")


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["code"] == code, body
    return body["error"]["message"]


def every_page(client: httpx.Client, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        body = ok(client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        pages.append(body["data"])
        if body["next_cursor"] is None:
            return pages
        cursor = body["next_cursor"]


def audit_actions(admin: httpx.Client, target: str) -> list[str]:
    return [row["action"] for row in ok(admin.get("/audit", params={"target": target}))["data"]]


def new_key(admin: httpx.Client, balance: str = "10", name: str = "someone") -> tuple[str, dict[str, Any]]:
    body = ok(admin.post("/keys", json={"name": name, "balance": balance}), 201)
    return body["api_key"], body["key"]


# -- the token -------------------------------------------------------------------------------------------


def test_requests_without_the_admin_token_are_refused(admin_server: RunningServer) -> None:
    with admin_server.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-the-same-length-000"}, {"Authorization": ADMIN_TOKEN}):
            r = client.get("/admin/v1/keys", headers=headers)
            assert "token" in error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        api_key = admin_server.create_key("1")
        # An API key is not an admin token, and the admin token is not an API key.
        error_of(client.get("/admin/v1/keys", headers={"Authorization": f"Bearer {api_key}"}), 401, "unauthorized")
        assert client.get("/v2/account", headers={SUB: ADMIN_TOKEN}).status_code == 401
        error_of(client.post("/admin/v1/keys", json={"balance": "-1"}), 401, "unauthorized")  # auth before validation


def test_without_a_token_every_admin_route_answers_404_until_one_is_rotated_in(tmp_path: Path) -> None:
    server = start_server(tmp_path / "off", config=None, workers=0)
    try:
        with server.client() as client:
            for method, path in (("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys"), ("DELETE", "/admin/v1/keys"),
                                 ("GET", "/admin/v1/audit"), ("GET", "/admin/v1/nothing"), ("GET", "/admin/")):
                r = client.request(method, path, headers=AUTH, json={"balance": "1"})
                assert r.status_code == 404, (method, path, r.text)
                assert r.json()["error"]["code"] == "not_found"
            denied = server.cli("admin", "token", check=False)
            assert denied.returncode == 1 and "admin API is off" in denied.stderr

            token = server.cli("admin", "token", "--rotate").stdout.strip()
            assert token.startswith("iga_")
            time.sleep(1.1)  # the API caches the stored token for a second
            keys = ok(client.get("/admin/v1/keys", headers={"Authorization": f"Bearer {token}"}))
            assert keys == {"data": [], "next_cursor": None}
            hidden = server.cli("admin", "token", check=False)
            assert hidden.returncode == 1 and token[:10] in hidden.stderr and token not in hidden.stderr + hidden.stdout

            newer = server.cli("admin", "token", "--rotate").stdout.strip()
            time.sleep(1.1)
            error_of(client.get("/admin/v1/keys", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")
            audit = ok(client.get("/admin/v1/audit", headers={"Authorization": f"Bearer {newer}"}))["data"]
            assert [(r["actor"], r["action"]) for r in audit] == [("cli", "admin_token.rotate")] * 2
    finally:
        server.stop()


def test_a_configured_token_wins_over_rotation(admin_server: RunningServer) -> None:
    assert admin_server.cli("admin", "token").stdout.strip() == ADMIN_TOKEN
    refused = admin_server.cli("admin", "token", "--rotate", check=False)
    assert refused.returncode == 2 and "IMAGEGATE_ADMIN_TOKEN" in refused.stderr


# -- keys, ledger --------------------------------------------------------------------------------------------


def test_key_lifecycle_with_audit(admin_server: RunningServer, admin: httpx.Client) -> None:
    plaintext, key = new_key(admin, "10", "console")
    assert plaintext.startswith("ig_") and plaintext.startswith(key["key_prefix"])
    assert key["balance"] == "10.000000" and key["webhook_secret"].startswith("whsec_") and not key["disabled"]
    assert "api_key" not in ok(admin.get(f"/keys/{key['id']}")) and ok(admin.get(f"/keys/{key['id']}")) == key
    with admin_server.client() as client:
        assert client.get("/v2/account", headers={SUB: plaintext}).json()["balance"] == "10.000000"

        topped = ok(admin.post(f"/keys/{key['id']}/topup", json={"amount": "2.5"}))
        assert topped["balance"] == "12.500000" and "webhook_secret" not in topped
        assert ok(admin.post(f"/keys/{key['id']}/disable"))["disabled"] is True
        time.sleep(1.1)  # the API caches keys for a second
        assert client.get("/v2/account", headers={SUB: plaintext}).status_code == 403
        assert ok(admin.post(f"/keys/{key['id']}/enable"))["disabled"] is False
        rotated = ok(admin.post(f"/keys/{key['id']}/rotate-webhook-secret"))
        assert rotated["webhook_secret"].startswith("whsec_") and rotated["webhook_secret"] != key["webhook_secret"]

    ledger = ok(admin.get(f"/keys/{key['id']}/ledger"))
    assert [(e["kind"], e["amount"], e["job_id"]) for e in ledger["data"]] == [("topup", "2.500000", None), ("topup", "10.000000", None)]
    assert audit_actions(admin, key["id"]) == [
        "key.rotate_webhook_secret", "key.enable", "key.disable", "key.topup", "key.create",
    ]
    created = ok(admin.get("/audit", params={"target": key["id"], "action": "key.create"}))["data"][0]
    assert created["actor"] == "admin-api" and created["detail"] == {"name": "console", "balance": "10.000000"}
    assert created["at"].endswith("Z")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/keys", {"balance": "-1"}, "balance"),
        ("/keys", {"balance": "NaN"}, "balance"),
        ("/keys", {"balance": "Infinity"}, "balance"),
        ("/keys", {"balance": 10}, "balance"),
        ("/keys", {"balance": "0.0000001"}, "balance"),
        ("/keys", {"name": "x" * 201}, "name"),
        ("/keys", {"balance": "1", "owner": "x"}, "owner"),
        ("/keys/{key}/topup", {"amount": "-5"}, "amount"),
        ("/keys/{key}/topup", {"amount": "0"}, "amount"),
        ("/keys/{key}/topup", {}, "amount"),
        ("/models/flux-dev/price", {"price": "-0.01"}, "price"),
    ],
)
def test_bad_amounts_and_fields_are_refused_naming_the_field(admin: httpx.Client, path: str, body: dict[str, Any], field: str) -> None:
    _, key = new_key(admin, "1")
    method = "PUT" if path.endswith("/price") else "POST"
    message = error_of(admin.request(method, path.format(key=key["id"]), json=body), 400, "invalid_request")
    assert message.startswith(f"{field} "), message
    assert ok(admin.get(f"/keys/{key['id']}"))["balance"] == "1.000000"
    assert audit_actions(admin, key["id"]) == ["key.create"]


def test_a_body_that_is_not_json_is_refused(admin: httpx.Client) -> None:
    r = admin.post("/keys", content=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(r, 400, "invalid_request") == "body must be valid JSON"
    form = admin.post("/keys", content=b'{"balance": "1"}', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert error_of(form, 415, "unsupported_media_type").startswith("Content-Type must be application/json")
    # Without a Content-Type the body is read as JSON, as on every route.
    assert ok(admin.post("/keys", content=b'{"balance": "1"}'), 201)["key"]["balance"] == "1.000000"


def test_nul_characters_in_ids_and_filters_are_refused_naming_the_field(admin: httpx.Client) -> None:
    # PostgreSQL text cannot hold NUL: refused at the edge, on every database alike.
    for method, path, field in (("GET", "/keys/a%00", "key_id"), ("GET", "/jobs?model_id=%00", "model_id"),
                                ("GET", "/audit?target=x%00", "target"), ("GET", "/webhooks?request_id=%00", "request_id"),
                                ("POST", "/keys/a%00/topup", "key_id")):
        message = error_of(admin.request(method, path, json={"amount": "1"}), 400, "invalid_request")
        assert message == f"{field} must not contain NUL characters"
    assert error_of(admin.post("/keys", json={"name": "a\x00b"}), 400, "invalid_request").startswith("name ")


def test_unknown_things_answer_404_in_the_admin_shape(admin: httpx.Client) -> None:
    for method, path in (("GET", "/keys/key_nope"), ("POST", "/keys/key_nope/topup"), ("GET", "/keys/key_nope/ledger"),
                         ("GET", "/models/nope"), ("POST", "/models/nope/disable"), ("GET", "/jobs/flux-dev_nope"),
                         ("POST", "/jobs/flux-dev_nope/cancel"), ("POST", "/webhooks/flux-dev_nope/redeliver"), ("GET", "/nothing")):
        error_of(admin.request(method, path, json={"amount": "1"}), 404, "not_found")


def test_concurrent_topups_through_the_api_keep_balance_equal_to_ledger(admin_server: RunningServer, admin: httpx.Client) -> None:
    _, key = new_key(admin, "0")
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: admin.post(f"/keys/{key['id']}/topup", json={"amount": "0.1"}).status_code, range(30)))
    assert codes == [200] * 30
    assert ok(admin.get(f"/keys/{key['id']}"))["balance"] == "3.000000"
    store = store_of(admin_server)
    try:
        assert store.keys.ledger_sum(key["id"]) == 3_000_000 == store.keys.get(key["id"]).balance_micros
    finally:
        store.dispose()
    assert len(ok(admin.get("/audit", params={"target": key["id"], "action": "key.topup", "limit": 100}))["data"]) == 30


def test_keys_page_newest_first_with_balances(admin: httpx.Client) -> None:
    made = [new_key(admin, f"{i}.5", f"paged-{i}")[1]["id"] for i in range(5)]
    pages = every_page(admin, "/keys", limit=2)
    listed = [k["id"] for page in pages for k in page]
    assert all(len(p) <= 2 for p in pages) and len(listed) == len(set(listed))
    assert [i for i in listed if i in made] == list(reversed(made))
    balances = {k["id"]: k["balance"] for page in pages for k in page}
    assert [balances[i] for i in made] == [f"{i}.500000" for i in range(5)]
    error_of(admin.get("/keys", params={"limit": 0}), 400, "invalid_request")
    assert "cursor" in error_of(admin.get("/keys", params={"cursor": "bogus"}), 400, "invalid_request")


# -- models ------------------------------------------------------------------------------------------------------


def test_models_switch_and_price_at_runtime(admin_server: RunningServer, admin: httpx.Client) -> None:
    from imagegate.catalog import MODELS

    models = [m for page in every_page(admin, "/models", limit=7) for m in page]
    assert [m["id"] for m in models] == sorted(MODELS)
    dev = next(m for m in models if m["id"] == "flux-dev")
    assert dev["enabled"] and dev["price"] == "0.025000" and dev["price_source"] == "catalog" and dev["runtime_price"] is None
    assert dev["loaded"] is False and dev["workers"] == [] and dev["loaded_on"] == []

    api_key = admin_server.create_key("1")
    priced = ok(admin.put("/models/flux-dev/price", json={"price": "0.04"}))
    assert (priced["price"], priced["price_source"], priced["runtime_price"]) == ("0.040000", "runtime", "0.040000")
    time.sleep(1.1)  # the API caches switches for a second
    with admin_server.client() as client:
        job_id = ok(client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: api_key}), 202)["request_id"]
        assert ok(admin.get(f"/jobs/{job_id}"))["price"] == "0.040000"
        cleared = ok(admin.delete("/models/flux-dev/price"))
        assert (cleared["price"], cleared["price_source"]) == ("0.025000", "catalog")

        assert ok(admin.post("/models/flux-dev/disable"))["enabled"] is False
        time.sleep(1.1)
        assert client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: api_key}).json()["error"] == "Model not found"
        assert "flux-dev\tdisabled" in admin_server.cli("models", "list").stdout
        assert ok(admin.post("/models/flux-dev/enable"))["switch_enabled"] is True
    assert audit_actions(admin, "flux-dev") == ["model.enable", "model.disable", "model.price_clear", "model.price_set"]


def test_workers_and_which_models_they_serve(admin_server: RunningServer, admin: httpx.Client) -> None:
    now = time.time()
    store = store_of(admin_server)
    registered = [
        worker_row("w-live", host="gpu-1", pid=101, device="cuda:0", gpu=1, models=["flux-dev"], loaded=["flux-dev"], state=WorkerState.BUSY, started_at=now - 60),
        worker_row("w-any", host="gpu-2", pid=102, started_at=now - 60),
        worker_row("w-stalled", host="gpu-3", pid=103, device="cuda:0", gpu=0, loaded=["flux-dev"], state=WorkerState.BUSY, last_error="x", started_at=now - 600, heartbeat_at=now - 300),
    ]
    try:
        for info in registered:
            store.workers.register(info)
        workers = {w["id"]: w for w in ok(admin.get("/workers"))["data"]}
        assert {i: w["live"] for i, w in workers.items()} == {"w-any": True, "w-live": True, "w-stalled": False}
        assert workers["w-live"]["state"] == "busy" and workers["w-live"]["models"] == ["flux-dev"]
        assert workers["w-stalled"]["heartbeat_age_seconds"] >= 300 and workers["w-any"]["models"] is None
        assert workers["w-live"]["heartbeat_at"].endswith("Z")
        dev = ok(admin.get("/models/flux-dev"))
        assert dev["loaded"] and dev["loaded_on"] == ["w-live"] and sorted(dev["workers"]) == ["w-any", "w-live"]
        assert ok(admin.get("/models/boogu-image"))["workers"] == ["w-any"]
        assert [[w["id"] for w in p] for p in every_page(admin, "/workers", limit=2)] == [["w-any", "w-live"], ["w-stalled"]]
    finally:
        for info in registered:
            store.workers.deregister(info.id)
        store.dispose()


# -- jobs, webhooks, usage --------------------------------------------------------------------------------------


def test_jobs_filter_page_and_cancel_any_keys_job(admin_server: RunningServer, admin: httpx.Client) -> None:
    api_key, key = new_key(admin, "1")
    with admin_server.client() as client:
        ids = [
            ok(client.post(FLUX_DEV, json={"prompt": f"p{i}", "seed": i}, headers={SUB: api_key, "X-Webhook-URL": DEAD_WEBHOOK}), 202)["request_id"]
            for i in range(4)
        ]
        assert client.get("/v2/account", headers={SUB: api_key}).json()["balance"] == "0.900000"

        pages = every_page(admin, "/jobs", key_id=key["id"], limit=3)
        assert [[j["id"] for j in p] for p in pages] == [list(reversed(ids))[:3], [ids[0]]]
        assert all(j["status"] == "QUEUED" and j["price"] == "0.025000" and "params" not in j for p in pages for j in p)
        detail = ok(admin.get(f"/jobs/{ids[1]}"))
        assert detail["params"]["prompt"] == "p1" and detail["attempts"] == 0 and detail["worker"] is None
        assert detail["webhook_url"] == DEAD_WEBHOOK and detail["media_urls"] == [] and detail["error"] is None

        canceled = ok(admin.post(f"/jobs/{ids[1]}/cancel"))
        assert canceled["status"] == "CANCELED" and canceled["completed_at"]
        assert wait_status(client, ids[1], api_key)["status"] == "CANCELED"
        assert client.get("/v2/account", headers={SUB: api_key}).json()["balance"] == "0.925000"  # released
        assert "already ended" in error_of(admin.post(f"/jobs/{ids[1]}/cancel"), 409, "conflict")

        by_status = ok(admin.get("/jobs", params={"key_id": key["id"], "status": ["CANCELED", "COMPLETED"]}))["data"]
        assert [j["id"] for j in by_status] == [ids[1]]
        assert "status" in error_of(admin.get("/jobs", params={"status": "DONE"}), 400, "invalid_request")
        created = [ok(admin.get(f"/jobs/{i}"))["created_at"] for i in ids]
        window = ok(admin.get("/jobs", params={"key_id": key["id"], "since": created[1], "until": created[3]}))["data"]
        assert [j["id"] for j in window] == [ids[2], ids[1]]
        assert "until" in error_of(admin.get("/jobs", params={"since": created[3], "until": created[1]}), 400, "invalid_request")
        assert ok(admin.get("/jobs", params={"model_id": "boogu-image", "key_id": key["id"]}))["data"] == []

        deliveries = ok(admin.get("/webhooks", params={"request_id": ids[1]}))["data"]
        assert [(d["event_type"], d["request_id"], d["target_url"]) for d in deliveries] == [("canceled", ids[1], DEAD_WEBHOOK)]
        assert ok(admin.get("/webhooks", params={"state": "pending", "request_id": ids[0]}))["data"] == []
        redelivered = ok(admin.post(f"/webhooks/{ids[1]}/redeliver"), 202)
        assert redelivered["event_id"] == deliveries[0]["event_id"] and redelivered["state"] == "pending"
        assert redelivered["attempts"] == 0
        assert "not finished" in error_of(admin.post(f"/webhooks/{ids[0]}/redeliver"), 409, "conflict")
        error_of(admin.get("/webhooks", params={"state": "lost"}), 400, "invalid_request")
    assert audit_actions(admin, ids[1]) == ["webhook.redeliver", "job.cancel"]
    cancel = ok(admin.get("/audit", params={"target": ids[1], "action": "job.cancel"}))["data"][0]
    assert cancel["detail"] == {"key_id": key["id"], "status": "CANCELED", "cancel_requested": False}


def test_usage_through_the_api(admin_server: RunningServer, admin: httpx.Client) -> None:
    api_key, key = new_key(admin, "1")
    with admin_server.client() as client:
        job_id = ok(client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: api_key}), 202)["request_id"]
    ok(admin.post(f"/jobs/{job_id}/cancel"))
    usage = ok(admin.get("/usage", params={"key_id": key["id"]}))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert usage["data"] == [{"day": today, "key_id": key["id"], "model_id": "flux-dev", "requests": 1, "images": 0, "spend": "0.000000"}]
    assert usage["totals"] == {"requests": 1, "images": 0, "spend": "0.000000"} and usage["group_by"] == ["day", "key", "model"]
    per_model = ok(admin.get("/usage", params={"group_by": "model", "key_id": key["id"]}))
    assert per_model["data"] == [{"day": None, "key_id": None, "model_id": "flux-dev", "requests": 1, "images": 0, "spend": "0.000000"}]
    assert "group_by" in error_of(admin.get("/usage", params={"group_by": "week"}), 400, "invalid_request")
    future = ok(admin.get("/usage", params={"key_id": key["id"], "since": "2999-01-01T00:00:00Z"}))
    assert future["data"] == [] and future["since"] == "2999-01-01T00:00:00.000Z"


def test_usage_counts_spend_and_images_of_completed_jobs(server: RunningServer) -> None:
    """On the suite's server with tiny real weights, its admin API switched on by a stored token."""
    token = server.cli("admin", "token", "--rotate").stdout.strip()
    time.sleep(1.1)  # the API caches the stored token for a second
    body = {
        "prompt": "a lighthouse", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1,
        "num_images": 2, "enable_safety_checker": False,
    }
    headers = {"Authorization": f"Bearer {token}"}
    with server.client() as client, httpx.Client(base_url=f"{server.base_url}/admin/v1", headers=headers, timeout=60) as admin:
        api_key, key = new_key(admin, "1", "usage")
        job_id = ok(client.post(FLUX_DEV, json=body, headers={SUB: api_key}), 202)["request_id"]
        assert wait_status(client, job_id, api_key)["status"] == "COMPLETED"
        detail = ok(admin.get(f"/jobs/{job_id}"))
        assert len(detail["media_urls"]) == 2 and detail["attempts"] == 1 and detail["price"] == "0.050000"
        usage = ok(admin.get("/usage", params={"key_id": key["id"], "group_by": "key,model"}))
        assert usage["data"] == [
            {"day": None, "key_id": key["id"], "model_id": "flux-dev", "requests": 1, "images": 2, "spend": "0.050000"}
        ]
        assert ok(admin.get(f"/keys/{key['id']}"))["balance"] == "0.950000"


# -- the document ------------------------------------------------------------------------------------------------


def test_openapi_documents_every_admin_route_with_the_bearer_scheme(admin_server: RunningServer) -> None:
    with admin_server.client() as client:
        spec = ok(client.get("/openapi.json"))
    assert spec["components"]["securitySchemes"]["adminToken"] == {
        "type": "http", "scheme": "bearer", "description": "The admin token: the `admin_token` setting, or `imagegate admin token --rotate`",
    }
    operations = [(path, method, op) for path, item in spec["paths"].items() if path.startswith("/admin/") for method, op in item.items()]
    assert len(operations) == 22
    for path, method, op in operations:
        assert op["tags"] == ["admin"] and op["security"] == [{"adminToken": []}], (path, method)
        success = next(code for code in op["responses"] if code.startswith("2"))
        assert "$ref" in str(op["responses"][success]["content"]["application/json"]["schema"]), (path, method)
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AdminError"}
        assert "422" not in op["responses"]
    assert spec["components"]["schemas"]["CreateKey"]["properties"]["balance"]["type"] == "string"
