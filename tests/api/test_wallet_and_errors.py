"""Keys, wallet, limits and bad input through the real server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from harness import RunningServer, start_server, wait_status
from imagegate.jobs.store import JobStore

SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = "/flux-dev/v1/dev/textToImage"


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No worker: jobs stay queued. Low rate, short sync bound."""
    srv = start_server(
        tmp_path_factory.mktemp("idle"),
        config=None,
        workers=0,
        extra_env={
            "IMAGEGATE_RATE_LIMIT_PER_SECOND": "1",
            "IMAGEGATE_RATE_LIMIT_BURST": "50",
            "IMAGEGATE_SYNC_TIMEOUT_SECONDS": "1",
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The `make serve` defaults: no weights configured, so the hub ids cannot be found offline."""
    srv = start_server(tmp_path_factory.mktemp("bare"), config=None, workers=1)
    yield srv
    srv.stop()


def store_of(server: RunningServer) -> JobStore:
    return JobStore(f"sqlite:///{Path(server.env['IMAGEGATE_DATA_DIR']) / 'imagegate.db'}")


def assert_wallets_balanced(server: RunningServer) -> None:
    store = store_of(server)
    try:
        for key_id, balance, ledger in store.keys.balances():
            assert balance == ledger, key_id
    finally:
        store.dispose()


def test_auth_errors(server: RunningServer) -> None:
    with server.client() as client:
        r = client.post(FLUX_DEV, json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
        r = client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: "ig_unknown"})
        assert r.status_code == 401
        key = server.create_key("1")
        server.cli("keys", "disable", key)
        time.sleep(1.1)  # the API caches keys for a second
        r = client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: key})
        assert r.status_code == 403 and r.json()["error"] == "Forbidden"


def test_disabled_model_answers_model_not_found(server: RunningServer, api_key: str) -> None:
    server.cli("models", "disable", "flux-pro")
    try:
        time.sleep(1.1)
        with server.client() as client:
            r = client.post("/flux-pro/v1/pro/textToImage", json={"prompt": "x"}, headers={SUB: api_key})
            assert r.status_code == 400
            assert r.json() == {"error": "Model not found", "message": "Model 'flux-pro' not found or is disabled"}
            listed = server.cli("models", "list").stdout
            assert "flux-pro\tdisabled" in listed
    finally:
        server.cli("models", "enable", "flux-pro")


def test_insufficient_balance(server: RunningServer) -> None:
    key = server.create_key("0.05")
    with server.client() as client:
        r = client.post("/pro1.1/v1/pro1.1ultra/generateRequest", json={"prompt": "x"}, headers={SUB: key})
        assert r.status_code == 402
        assert r.json() == {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance. Required: $0.08"}
        assert client.get("/v2/account", headers={SUB: key}).json()["balance"] == "0.050000"


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({}, "prompt", "is required"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": 5}, "prompt", "must be a string"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", "≥ 1"),
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps", "≤ 50"),
        ({"prompt": "x", "num_inference_steps": "28"}, "num_inference_steps", "must be an integer"),
        ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale", "must be a number"),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "must be one of: jpeg, png"),
        ({"prompt": "x", "image_size": "huge"}, "image_size", "must be one of: square_hd"),
        ({"prompt": "x", "image_size": {"width": 100, "height": 512}}, "image_size.width", "multiple of 16"),
        ({"prompt": "x", "image_size": {"width": 4096, "height": 512}}, "image_size.width", "between"),
        ({"prompt": "x", "acceleration": "max"}, "acceleration", "none, regular, high"),
        ({"prompt": "x", "num_images": 9}, "num_images", "≤ 4"),
        ({"prompt": "x", "enable_safety_checker": "yes"}, "enable_safety_checker", "must be a boolean"),
    ],
)
def test_validation_errors_name_the_field_and_rule(server: RunningServer, api_key: str, body: dict[str, Any], field: str, words: str) -> None:
    with server.client() as client:
        before = client.get("/v2/account", headers={SUB: api_key}).json()["balance"]
        r = client.post(FLUX_DEV, json=body, headers={SUB: api_key})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field
        assert words in r.json()["error"] and r.json()["error"].startswith(field)
        assert client.get("/v2/account", headers={SUB: api_key}).json()["balance"] == before


def test_kontext_validation_messages_match_the_seed_rules(server: RunningServer, api_key: str) -> None:
    path = "/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate"
    cases = [
        ({}, "input_image is required"),
        ({"input_image": "not a url"}, "input_image"),
        ({"input_image": "https://x.test/a.png", "output_format": "webp"}, "output_format must be one of: jpg, png"),
        ({"input_image": "https://x.test/a.png", "safety_tolerance": 3}, "safety_tolerance must be ≤ 2"),
        ({"input_image": "https://x.test/a.png", "seed": -1}, "seed must be ≥ 0"),
        ({"input_image": "https://x.test/a.png", "webhook": "ftp://x"}, "webhook must be an https:// URL"),
    ]
    with server.client() as client:
        for body, message in cases:
            r = client.post(path, json=body, headers={SUB: api_key})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"].startswith(message), (body, r.json())


def test_status_is_private_to_the_key(server: RunningServer, api_key: str) -> None:
    other = server.create_key("1")
    with server.client() as client:
        r = client.post("/flux-1-schnell/v1/getDataBatch", json={"prompt": "x", "num_steps": 1, "width": 64, "height": 64, "webhook_url": "http://127.0.0.1:9/x"}, headers={"X-Secret-Key": api_key})
        request_id = r.json()["requestId"]
        assert client.get(f"/v2/requests/status/{request_id}", headers={SUB: other}).status_code == 404
        assert client.get(f"/v2/requests/status/{request_id}", headers={SUB: api_key}).status_code == 200
        assert client.get("/v2/requests/status/nope_123", headers={SUB: api_key}).status_code == 404


def test_seed_gives_identical_pixels(server: RunningServer, api_key: str) -> None:
    body = {"prompt": "a quiet harbour", "image_size": {"width": 128, "height": 128}, "num_inference_steps": 3, "seed": 1234, "output_format": "png"}
    with server.client() as client:
        outputs = []
        for seed in (1234, 1234, 99):
            r = client.post(FLUX_DEV, json={**body, "seed": seed}, headers={SUB: api_key})
            done = wait_status(client, r.json()["request_id"], api_key)
            outputs.append(client.get(done["output"]["media_url"][0]).content)
        assert outputs[0] == outputs[1]
        assert outputs[0] != outputs[2]


def test_cancel_running_and_queued(server: RunningServer, api_key: str) -> None:
    slow = {"prompt": "x", "image_urls": ["http://127.0.0.1:9/none.png"], "num_inference_steps": 150, "image_size": "square_hd"}
    with server.client() as client:
        before = client.get("/v2/account", headers={SUB: api_key}).json()["balance"]
        first = client.post(FLUX_DEV, json={"prompt": "long", "num_inference_steps": 50, "image_size": "square_hd", "num_images": 4}, headers={SUB: api_key}).json()["request_id"]
        second = client.post(FLUX_DEV, json={"prompt": "queued", "num_inference_steps": 4}, headers={SUB: api_key}).json()["request_id"]
        r = client.put(f"/v2/requests/{second}/cancel", headers={SUB: api_key})
        assert r.status_code == 200
        # Either canceled while queued, or (if the worker was quick) flagged and stopped.
        deadline = time.monotonic() + 30
        while client.get(f"/v2/requests/status/{first}", headers={SUB: api_key}).json()["status"] == "QUEUED":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = client.put(f"/v2/requests/{first}/cancel", headers={SUB: api_key})
        assert r.status_code == 200
        assert wait_status(client, first, api_key)["status"] == "CANCELED"
        assert wait_status(client, second, api_key)["status"] == "CANCELED"
        assert client.get("/v2/account", headers={SUB: api_key}).json()["balance"] == before
    del slow
    assert_wallets_balanced(server)


def test_parallel_submits_against_small_balance(idle_server: RunningServer) -> None:
    key = idle_server.create_key("0.25")  # exactly 10 flux-dev images

    def submit(_: int) -> int:
        with httpx.Client(base_url=idle_server.base_url, timeout=60) as client:
            return client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: key}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(submit, range(40)))
    assert codes.count(202) == 10 and codes.count(402) == 30
    with idle_server.client() as client:
        assert client.get("/v2/account", headers={SUB: key}).json()["balance"] == "0.000000"
    assert_wallets_balanced(idle_server)


def test_rate_limit_answers_429_with_retry_after(idle_server: RunningServer) -> None:
    key = idle_server.create_key("100")
    with idle_server.client() as client:
        codes = []
        for _ in range(60):
            r = client.post("/flux-1-schnell/v1/getDataBatch", json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/x"}, headers={"X-Secret-Key": key})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"] == "Too Many Requests"
                break
        assert 429 in codes and codes.count(202) >= 45


def test_sync_timeout_is_an_error_and_not_charged(idle_server: RunningServer) -> None:
    key = idle_server.create_key("1")
    with idle_server.client() as client:
        r = client.post("/flux-2-klein-4b/v1/generateImage", json={"prompt": "x", "width": 512, "height": 512}, headers={SUB: key})
        assert r.status_code == 504
        assert "did not finish within 1 seconds" in r.json()["message"]
        assert client.get("/v2/account", headers={SUB: key}).json()["balance"] == "1.000000"
    assert_wallets_balanced(idle_server)


def test_missing_weights_end_in_error_naming_them_and_are_not_charged(bare_server: RunningServer) -> None:
    key = bare_server.create_key("1")
    with bare_server.client() as client:
        r = client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: key})
        assert r.status_code == 202
        done = wait_status(client, r.json()["request_id"], key, timeout=60)
        assert done["status"] == "ERROR"
        assert "black-forest-labs/FLUX.1-dev" in done["error"] and "imagegate weights pull flux-dev" in done["error"]
        assert done["output"] is None
        assert client.get("/v2/account", headers={SUB: key}).json()["balance"] == "1.000000"
        # The server keeps serving.
        assert client.get("/healthz").status_code == 200
