"""The delivery log and redelivery endpoints, through the real FastAPI app."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from imagegate.api.app import create_app
from imagegate.jobs.store import JobStore
from imagegate.jobs.outbox import DELIVERED

from .conftest import Kit, Receiver, Reply

KitFactory = Callable[..., Kit]


@pytest.fixture()
def client_for() -> Iterator[Callable[[Kit], TestClient]]:
    clients: list[TestClient] = []

    def make(kit: Kit) -> TestClient:
        client = TestClient(create_app(kit.settings, store=kit.store))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_attempts_listing_and_redelivery(store: JobStore, kit_factory: KitFactory, receiver: Receiver, client_for: Callable[[Kit], TestClient]) -> None:
    kit = kit_factory(store)
    client = client_for(kit)
    auth = {"Ocp-Apim-Subscription-Key": kit.plaintext}
    receiver.script = [Reply(503, body=b"down for a moment")]
    job = kit.submit(receiver.url())

    not_yet = client.post(f"/v2/requests/{job.id}/webhooks/redeliver", headers=auth)
    assert not_yet.status_code == 409, not_yet.text

    kit.run(job)
    kit.deliverer()
    first = kit.wait_state(job.id, "completed", DELIVERED)

    listing = client.get(f"/v2/requests/{job.id}/webhooks", headers=auth)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["request_id"] == job.id and body["webhook_mode"] == "terminal"
    assert [(e["event_type"], e["state"], e["attempts"]) for e in body["events"]] == [("completed", "delivered", 2)]
    attempts = body["attempts"]
    assert [(a["event_id"], a["event_type"], a["status_code"]) for a in attempts] == [
        (first.id, "completed", 503),
        (first.id, "completed", 200),
    ]
    assert "down for a moment" in attempts[0]["error"] and attempts[1]["error"] is None
    assert attempts[0]["time"].endswith("Z") and attempts[0]["duration_ms"] >= 0

    again = client.post(f"/v2/requests/{job.id}/webhooks/redeliver", headers={"Authorization": f"Bearer {kit.plaintext}"})
    assert again.status_code == 202, again.text
    assert again.json()["event"]["event_id"] == first.id
    got = receiver.wait_for(3)
    assert got[2].webhook_id == got[0].webhook_id == first.id and got[2].body == got[1].body
    kit.wait_state(job.id, "completed", DELIVERED)
    assert [a["status_code"] for a in client.get(f"/v2/requests/{job.id}/webhooks", headers=auth).json()["attempts"]] == [503, 200, 200]


def test_errors(sqlite_store: JobStore, kit_factory: KitFactory, client_for: Callable[[Kit], TestClient]) -> None:
    kit = kit_factory(sqlite_store)
    client = client_for(kit)
    auth = {"X-Secret-Key": kit.plaintext}
    plain = kit.submit(None)
    kit.run(plain)
    assert client.post(f"/v2/requests/{plain.id}/webhooks/redeliver", headers=auth).status_code == 400
    assert client.get(f"/v2/requests/{plain.id}/webhooks", headers=auth).json()["events"] == []

    filtered = kit.submit("https://hooks.example.test/x", "events", ["start"])
    kit.run(filtered)
    assert client.post(f"/v2/requests/{filtered.id}/webhooks/redeliver", headers=auth).status_code == 409

    other_plaintext, _ = sqlite_store.keys.create(name="someone else")
    other = {"Ocp-Apim-Subscription-Key": other_plaintext}
    assert client.get(f"/v2/requests/{plain.id}/webhooks", headers=other).status_code == 404
    assert client.post(f"/v2/requests/{plain.id}/webhooks/redeliver", headers=other).status_code == 404
    assert client.get("/v2/requests/nope/webhooks", headers=auth).status_code == 404
    assert client.get(f"/v2/requests/{plain.id}/webhooks").status_code == 401


@pytest.mark.parametrize(
    "development, headers, body, field",
    [
        (False, {"X-Webhook-URL": "https://10.0.0.1/hook"}, {}, "X-Webhook-URL"),
        (False, {"X-Webhook-URL": "https://169.254.169.254/latest"}, {}, "X-Webhook-URL"),
        (False, {"X-Webhook-URL": "https://[::ffff:127.0.0.1]:8443/hook"}, {}, "X-Webhook-URL"),
        (False, {"X-Webhook-URL": "https://2130706433/hook"}, {}, "X-Webhook-URL"),
        (False, {}, {"webhook": "https://192.168.1.20/hook"}, "webhook"),
        (True, {"X-Webhook-URL": "https://100.64.0.1/hook"}, {}, "X-Webhook-URL"),
        (True, {}, {"webhook": "https://[fd00::1]/hook"}, "webhook"),
    ],
)
def test_private_ip_literal_targets_are_refused_at_submit(
    sqlite_store: JobStore, kit_factory: KitFactory, client_for: Callable[[Kit], TestClient],
    development: bool, headers: dict[str, str], body: dict[str, str], field: str,
) -> None:
    kit = kit_factory(sqlite_store, allow_http_webhooks=development)
    client = client_for(kit)
    r = client.post(
        "/p-image/v1/p-image-edit/generate",
        json={"prompt": "x", "images": ["https://images.example.test/a.png"], **body},
        headers={"Ocp-Apim-Subscription-Key": kit.plaintext, **headers},
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    assert "must point to a public address" in r.json()["message"]
    assert sqlite_store.jobs.list(key_id=kit.key.id) == []


def test_batch_webhook_url_literal_is_checked_and_loopback_passes_in_development(
    sqlite_store: JobStore, kit_factory: KitFactory, client_for: Callable[[Kit], TestClient]
) -> None:
    kit = kit_factory(sqlite_store, allow_http_webhooks=True)
    client = client_for(kit)
    auth = {"X-Secret-Key": kit.plaintext}
    path = "/flux-1-schnell/v1/getDataBatch"
    refused = client.post(path, json={"prompt": "x", "webhook_url": "https://10.1.2.3/hook"}, headers=auth)
    assert refused.status_code == 400 and refused.json()["field"] == "webhook_url", refused.text
    # Development mode: loopback literals pass (http and https); public ones always do.
    for url in ("http://127.0.0.1:9/hook", "https://[::1]:9/hook", "https://93.184.215.14/hook"):
        accepted = client.post(path, json={"prompt": "x", "webhook_url": url}, headers=auth)
        assert accepted.status_code == 202, (url, accepted.text)
