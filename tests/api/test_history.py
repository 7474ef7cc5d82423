"""GET /v2/requests and GET /v2/account/ledger through the real server: the key's own history,
newest first, a page at a time."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from harness import RunningServer, start_server, wait_status

SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = "/flux-dev/v1/dev/textToImage"


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No worker: requests stay queued."""
    srv = start_server(tmp_path_factory.mktemp("history"), config=None, workers=0)
    yield srv
    srv.stop()


def pages(client: Any, path: str, key: str, **params: Any) -> list[list[dict[str, Any]]]:
    out, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get(path, params=query, headers={SUB: key})
        assert r.status_code == 200, r.text
        out.append(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


def test_requests_page_newest_first_with_cost_and_status_filter(idle_server: RunningServer) -> None:
    key, other = idle_server.create_key("1"), idle_server.create_key("1")
    with idle_server.client() as client:
        ids = [client.post(FLUX_DEV, json={"prompt": f"p{i}"}, headers={SUB: key}).json()["request_id"] for i in range(5)]
        client.put(f"/v2/requests/{ids[1]}/cancel", headers={SUB: key})
        got = pages(client, "/v2/requests", key, limit=2)
        assert [len(p) for p in got] == [2, 2, 1]
        items = [item for page in got for item in page]
        assert [item["request_id"] for item in items] == ids[::-1]
        status = client.get(f"/v2/requests/status/{ids[4]}", headers={SUB: key}).json()
        # The poll of a queued request also says where it stands in the queue; a listing does not.
        assert status.pop("queue_position") == 3
        assert items[0] == {**status, "cost": "0.025000", "thumbnail": None}
        canceled = client.get("/v2/requests", params={"status": "CANCELED"}, headers={SUB: key}).json()
        assert [i["request_id"] for i in canceled["items"]] == [ids[1]] and canceled["next_cursor"] is None
        assert canceled["items"][0]["cost"] == "0.000000"
        both = client.get("/v2/requests", params={"status": "queued,CANCELED"}, headers={SUB: key}).json()["items"]
        assert len(both) == 5
        assert client.get("/v2/requests", headers={SUB: other}).json() == {"items": [], "next_cursor": None}


def test_requests_refuse_bad_paging(idle_server: RunningServer) -> None:
    key = idle_server.create_key("1")
    with idle_server.client() as client:
        for params, field in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"cursor": "not-ours"}, "cursor"), ({"status": "DONE"}, "status")):
            r = client.get("/v2/requests", params=params, headers={SUB: key})
            assert r.status_code == 400 and r.json()["field"] == field, r.text
        r = client.get("/v2/account/ledger", params={"cursor": "WyJ4Il0"}, headers={SUB: key})  # ["x"]
        assert r.status_code == 400 and r.json()["field"] == "cursor"
        assert client.get("/v2/requests").status_code == 401


def test_ledger_pages_newest_first(idle_server: RunningServer) -> None:
    key = idle_server.create_key("1")
    with idle_server.client() as client:
        ids = [client.post(FLUX_DEV, json={"prompt": f"p{i}"}, headers={SUB: key}).json()["request_id"] for i in range(3)]
        client.put(f"/v2/requests/{ids[0]}/cancel", headers={SUB: key})
        got = pages(client, "/v2/account/ledger", key, limit=3)
    rows = [row for page in got for row in page]
    assert [len(p) for p in got] == [3, 2]
    assert [(r["kind"], r["amount"], r["request_id"]) for r in rows] == [
        ("release", "0.025000", ids[0]),
        ("hold", "-0.025000", ids[2]),
        ("hold", "-0.025000", ids[1]),
        ("hold", "-0.025000", ids[0]),
        ("topup", "1.000000", None),
    ]
    assert rows[0]["id"] > rows[-1]["id"] and rows[0]["created_at"].endswith("Z")


def test_a_finished_request_shows_its_first_output_as_thumbnail(server: RunningServer) -> None:
    key = server.create_key("1")
    body = {"prompt": "a lamp", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2, "num_images": 2}
    with server.client() as client:
        request_id = client.post(FLUX_DEV, json=body, headers={SUB: key}).json()["request_id"]
        done = wait_status(client, request_id, key)
        [item] = client.get("/v2/requests", headers={SUB: key}).json()["items"]
    assert item["thumbnail"] == done["output"]["media_url"][0] and item["cost"] == "0.050000"
