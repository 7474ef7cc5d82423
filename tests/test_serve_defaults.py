"""The product as a user starts it: ``imagegate serve --config tiny/imagegate.toml`` with no
``IMAGEGATE_*`` variable, no public URL and no test-only setting (private input URLs and http
webhooks refused, the default rate limit, one embedded worker, SQLite under ``.imagegate``).

Every other end-to-end module runs a server the harness configures; this one exists so that a
crash that only the defaults reach (an unset ``public_base_url`` once killed the worker on the
first webhook, and every worker after it) cannot pass the suite.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from harness import RunningServer, default_env, free_port, png_bytes, sample_photo, start_default_server, wait_status

SUB = "Ocp-Apim-Subscription-Key"
SECRET = "X-Secret-Key"
# https (accepted at submit on the defaults) to a name that resolves to loopback: delivery
# refuses it, so nothing leaves the machine, but the whole event path runs; the refusal is
# final, so each event fails after its one attempt instead of being retried for a day.
HOOK = "https://localhost:9/hook"


@pytest.fixture(scope="module")
def default_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_default_server(tmp_path_factory.mktemp("defaults"), tiny_models)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(default_server: RunningServer) -> str:
    return default_server.create_key("10", name="defaults")


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(sample_photo())).decode()


def webhook_events(client: httpx.Client, request_id: str, key: str) -> list[dict[str, Any]]:
    r = client.get(f"/v2/requests/{request_id}/webhooks", headers={SUB: key})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def refused_for_good(client: httpx.Client, request_id: str, key: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The request's events once none is pending: each one sent failed after its one attempt
    (progress updates superseded before their turn are dropped unsent)."""
    deadline = time.monotonic() + timeout
    while True:
        events = webhook_events(client, request_id, key)
        if events and all(e["state"] != "pending" for e in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.1)
    for event in events:
        if event["state"] == "dropped" and event["attempts"] == 0:
            continue
        assert event["state"] == "failed" and event["attempts"] == 1, event
        assert event["last_error"].startswith("target refused: address ") and "loopback" in event["last_error"], event
    assert events[-1]["state"] == "failed", events
    return events


def test_data_lands_in_the_default_directory(default_server: RunningServer, key: str) -> None:
    assert default_server.cwd is not None
    assert (default_server.cwd / ".imagegate" / "imagegate.db").exists()


def test_queue_request_with_header_webhook_completes_and_records_the_event(default_server: RunningServer, key: str) -> None:
    with default_server.client() as client:
        r = client.post(
            "/flux-dev/v1/dev/textToImage",
            json={"prompt": "a lighthouse", "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}, "seed": 1},
            headers={SUB: key, "X-Webhook-URL": HOOK},
        )
        assert r.status_code == 202, r.text
        queued = r.json()
        # No public_base_url: URLs are built from where the server listens.
        assert queued["polling_url"] == f"{default_server.base_url}/v2/requests/status/{queued['request_id']}"
        done = wait_status(client, queued["request_id"], key, timeout=120)
        assert done["status"] == "COMPLETED", done
        assert done["output"]["media_url"][0].startswith(default_server.base_url + "/media/")
        assert client.get(done["output"]["media_url"][0].removeprefix(default_server.base_url)).status_code == 200
        events = refused_for_good(client, queued["request_id"], key)
        assert [e["event_type"] for e in events] == ["completed"]


def test_the_worker_survives_webhook_jobs_of_every_style(default_server: RunningServer, key: str) -> None:
    """Body webhooks (events mode), the batch webhook_url and sync webhooks, one after another:
    each job completes, which needs the same worker (or its restart) to keep claiming."""
    with default_server.client() as client:
        r = client.post(
            "/p-image/v1/p-image-edit/generate",
            json={"prompt": "make it blue", "images": [data_uri()], "turbo": True, "seed": 3, "webhook": HOOK},
            headers={SUB: key},
        )
        assert r.status_code == 202, r.text
        edit = wait_status(client, r.json()["request_id"], key, timeout=120)
        assert edit["status"] == "COMPLETED", edit
        assert {e["event_type"] for e in refused_for_good(client, edit["request_id"], key)} >= {"start", "completed"}

        r = client.post(
            "/flux-1-schnell/v1/getDataBatch",
            json={"prompt": "a cat", "num_steps": 2, "width": 64, "height": 64, "webhook_url": HOOK},
            headers={SECRET: key},
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["requestId"]
        deadline = time.monotonic() + 120
        while True:
            status = client.post("/flux-1-schnell/v1/checkStatus", json={"requestId": batch_id}, headers={SECRET: key}).json()
            if status["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["status"] == "completed", status

        r = client.post(
            "/flux-dev/v1/dev/textToImage",
            json={"prompt": "a boat", "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}},
            headers={SUB: key, "X-Webhook-URL": HOOK, "X-Webhook-Mode": "sync"},
        )
        assert r.status_code == 202, r.text
        synced = wait_status(client, r.json()["request_id"], key, timeout=120)
        assert synced["status"] == "COMPLETED"
        assert [e["event_type"] for e in refused_for_good(client, synced["request_id"], key)][-1] == "completed"
    assert "Traceback" not in default_server.log(), default_server.log()


def test_sync_styles_on_the_defaults(default_server: RunningServer, key: str) -> None:
    with default_server.client() as client:
        r = client.post(
            "/flux-dev/v1/dev/textToImage",
            json={"prompt": "a fox", "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}, "sync_mode": True},
            headers={SUB: key},
        )
        assert r.status_code == 200, r.text
        assert r.json()["output"]["media_url"][0].startswith("data:image/jpeg;base64,")

        r = client.post("/flux-1-schnell/v1/getData", json={"prompt": "a car", "num_steps": 2, "width": 64, "height": 64}, headers={SUB: key})
        assert r.status_code == 200, r.text
        assert r.json()["output"].startswith(default_server.base_url + "/media/")

        r = client.post("/flux-1-schnell/v1/getDataBatch", json={"prompt": "a dog", "num_steps": 2, "width": 64, "height": 64}, headers={SECRET: key})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"


def test_private_input_urls_and_http_webhooks_are_refused_on_the_defaults(default_server: RunningServer, key: str) -> None:
    with default_server.client() as client:
        r = client.post(
            "/flux-dev/v1/dev/textToImage",
            json={"prompt": "x", "num_inference_steps": 2},
            headers={SUB: key, "X-Webhook-URL": "http://127.0.0.1:9/hook"},
        )
        assert r.status_code == 400 and r.json()["field"] == "X-Webhook-URL"
        r = client.post(
            "/flux-dev/v1/dev/imageToImage",
            json={"prompt": "x", "image_url": f"{default_server.base_url}/healthz", "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}},
            headers={SUB: key},
        )
        assert r.status_code == 202, r.text
        failed = wait_status(client, r.json()["request_id"], key, timeout=120)
        assert failed["status"] == "FAILED" and "image_url" in failed["error"]


def test_flags_win_over_the_environment(tiny_models: Path, tmp_path: Path) -> None:
    """`IMAGEGATE_PORT=A imagegate serve --port B` listens on B (and builds its URLs with B)."""
    wrong, right = free_port(), free_port()
    env = dict(default_env(), IMAGEGATE_PORT=str(wrong))
    log = (tmp_path / "precedence.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate.cli", "serve", "--config", str(tiny_models), "--port", str(right)],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{right}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "precedence.log").read_text())
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{wrong}/healthz", timeout=1)
    finally:
        proc.terminate()
        proc.wait(30)
