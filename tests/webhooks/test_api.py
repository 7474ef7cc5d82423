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
