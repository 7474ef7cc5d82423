"""GET /v2/requests/{request_id}/events through the real server, read with httpx streaming."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from harness import RunningServer, start_server, wait_status

SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = "/flux-dev/v1/dev/textToImage"
# A second or more on the tiny weights: the worker reports progress (every 0.25 s) on the way.
STEPS = 12
SLOW_BODY = {"prompt": "a harbour at night", "image_size": {"width": 128, "height": 128}, "num_inference_steps": STEPS, "seed": 3}


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a stream, and ("comment", text) for comment lines."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def stream(client: httpx.Client, request_id: str, key: str) -> Any:
    return client.stream("GET", f"/v2/requests/{request_id}/events", headers={SUB: key})


def collect(client: httpx.Client, request_id: str, key: str) -> list[tuple[str, Any]]:
    with stream(client, request_id, key) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(events(response))


def test_a_queued_request_streams_status_progress_and_its_final_status(server: RunningServer, api_key: str) -> None:
    with server.client() as client:
        request_id = client.post(FLUX_DEV, json=SLOW_BODY, headers={SUB: api_key}).json()["request_id"]
        seen = collect(client, request_id, api_key)
        final = client.get(f"/v2/requests/status/{request_id}", headers={SUB: api_key}).json()
    names = [name for name, _ in seen]
    assert names[0] == "status" and names[-1] == "done" and names.count("done") == 1
    statuses = [data["status"] for name, data in seen if name == "status"]
    assert statuses[-1] == "PROCESSING" and statuses[0] in ("QUEUED", "PROCESSING")
    progress = [data for name, data in seen if name == "progress"]
    assert progress, names
    assert all(p["request_id"] == request_id and p["steps"] == STEPS and 1 <= p["step"] <= STEPS for p in progress)
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert all(p["progress"] == round(p["step"] / STEPS, 4) for p in progress)
    assert "loss" not in progress[0]
    assert seen[-1][1] == final and final["status"] == "COMPLETED"


def test_short_requests_back_to_back_each_stream_their_first_step(server: RunningServer, api_key: str) -> None:
    # Each job's first step is written at once, whatever the previous job wrote just before: a
    # request shorter than the progress interval still shows that it moved.
    body = {**SLOW_BODY, "num_inference_steps": 4, "image_size": {"width": 64, "height": 64}}
    with server.client() as client:
        for _ in range(3):
            request_id = client.post(FLUX_DEV, json=body, headers={SUB: api_key}).json()["request_id"]
            seen = collect(client, request_id, api_key)
            progress = [data for name, data in seen if name == "progress"]
            assert progress and progress[0]["step"] >= 1 and seen[-1][1]["status"] == "COMPLETED", seen


def test_a_sync_output_request_streams_its_events_too(server: RunningServer) -> None:
    key = server.create_key("1")
    answer: dict[str, Any] = {}
    body = {"prompt": "a kite", "steps": 8, "width": 512, "height": 512}

    def submit() -> None:
        with server.client() as client:
            answer["response"] = client.post("/flux-2-klein-4b/v1/generateImage", json=body, headers={SUB: key})

    thread = threading.Thread(target=submit)
    thread.start()
    with server.client() as client:
        deadline = time.monotonic() + 30
        while not (items := client.get("/v2/requests", headers={SUB: key}).json()["items"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        seen = collect(client, items[0]["request_id"], key)
    thread.join(120)
    assert seen[-1][0] == "done" and seen[-1][1]["status"] == "COMPLETED"
    assert answer["response"].json() == {"output": seen[-1][1]["output"]["media_url"][0]}


def test_only_the_owner_may_listen(server: RunningServer, api_key: str) -> None:
    other = server.create_key("1")
    with server.client() as client:
        request_id = client.post(FLUX_DEV, json={**SLOW_BODY, "num_inference_steps": 2}, headers={SUB: api_key}).json()["request_id"]
        for headers, status in (({SUB: other}, 404), ({}, 401), ({"Authorization": f"Bearer {other}"}, 404)):
            r = client.get(f"/v2/requests/{request_id}/events", headers=headers)
            assert r.status_code == status and r.json()["error"] in ("Not Found", "Unauthorized")
        r = client.get("/v2/requests/nope_123/events", headers={SUB: api_key})
        assert r.status_code == 404 and r.json() == {"error": "Not Found", "message": "Request 'nope_123' not found"}
        wait_status(client, request_id, api_key)


def test_a_client_that_leaves_stops_its_stream_and_not_the_request(server: RunningServer, api_key: str) -> None:
    with server.client() as client:
        request_id = client.post(FLUX_DEV, json=SLOW_BODY, headers={SUB: api_key}).json()["request_id"]
        with stream(client, request_id, api_key) as response:
            first = next(events(response))
        assert first[0] == "status"
        left = time.monotonic()
        # The stream notices at once, not at its next keep-alive (15 s away).
        line = f"event stream of {request_id} closed (the client left)"
        while line not in server.log():
            assert time.monotonic() - left < 3, "the stream went on after its client left"
            time.sleep(0.05)
        done = wait_status(client, request_id, api_key)
    assert done["status"] == "COMPLETED"
    assert f"event stream of {request_id} closed (the request ended)" not in server.log()


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No worker (requests stay queued), and keep-alives every 0.2 s."""
    srv = start_server(tmp_path_factory.mktemp("events"), config=None, workers=0, extra_env={"IMAGEGATE_EVENTS_KEEPALIVE_SECONDS": "0.2"})
    yield srv
    srv.stop()


def test_a_quiet_stream_sends_keep_alives_and_ends_with_the_request(idle_server: RunningServer) -> None:
    key = idle_server.create_key("1")
    with idle_server.client() as client:
        request_id = client.post(FLUX_DEV, json={"prompt": "x"}, headers={SUB: key}).json()["request_id"]
        seen: list[tuple[str, Any]] = []
        with stream(client, request_id, key) as response:
            for item in events(response):
                seen.append(item)
                if [name for name, _ in seen].count("comment") == 2:
                    client.put(f"/v2/requests/{request_id}/cancel", headers={SUB: key})
        assert seen[0][0] == "status" and seen[0][1]["status"] == "QUEUED"
        assert ("comment", "keep-alive") in seen
        assert seen[-1][0] == "done" and seen[-1][1]["status"] == "CANCELED"
        # A request that has ended streams its final status alone.
        assert collect(client, request_id, key) == [("done", seen[-1][1])]
