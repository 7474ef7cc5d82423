"""The API process SIGKILLed while submits are in flight, then restarted on the same data.

The hold and the job insert are one transaction, so whatever the kill interrupted, the restarted
server finds every hold with its job and every priced job with its hold; every request that was
answered 202 is still there; a client that retries with its Idempotency-Key gets exactly one job;
and final webhooks that were waiting for a receiver that was down are delivered after it is up.
No worker runs here (the jobs are canceled at the end, which is a final status too), so the
module is quick.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from imagegate.jobs.status import JobStatus

from .support import (
    FAST,
    FLUX_DEV,
    FLUX_DEV_PRICE,
    SUB,
    Receiver,
    balance,
    check_books,
    free_port,
    kill_hard,
    new_key,
    open_store,
    pending_terminal_events,
    server_env,
    start_server,
    submit,
    wait_until,
)

THREADS = 12


def test_api_killed_mid_submit_leaves_no_hold_without_job(tmp_path: Path) -> None:
    data = tmp_path / "api-crash"
    receiver = Receiver(free_port())  # not started: connections are refused
    server = start_server(data, config=None, workers=0, extra_env=server_env())
    store = open_store(server)
    try:
        key, key_id = new_key(store, 1000)
        start_balance = balance(store, key_id)

        # Two jobs end (canceled while queued) while the receiver is down: their final webhooks
        # are pending in the outbox when the server dies.
        with server.client() as client:
            hooked = [submit(client, key, FAST, **{"X-Webhook-URL": receiver.url}) for _ in range(2)]
            for job_id in hooked:
                assert client.put(f"/v2/requests/{job_id}/cancel", headers={SUB: key}).status_code == 200
        wait_until(lambda: all(pending_terminal_events(store, j) for j in hooked), 10, "pending final webhooks")

        # Many clients submit as fast as they can; some requests carry an Idempotency-Key.
        accepted: list[str] = []
        cut_off: list[tuple[str | None, dict[str, Any]]] = []  # (idempotency key, body) of unanswered requests
        in_flight = 0  # requests the server had received when it died (not refused connections)
        lock = threading.Lock()
        stop = threading.Event()

        def flood(n: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = {**FAST, "prompt": f"client {n} request {i}"}
                    idem = f"c{n}-r{i}" if i % 2 else None
                    headers = {SUB: key, **({"Idempotency-Key": idem} if idem else {})}
                    try:
                        r = c.post(FLUX_DEV, json=body, headers=headers)
                    except httpx.HTTPError as exc:
                        nonlocal in_flight
                        with lock:
                            cut_off.append((idem, body))
                            in_flight += not isinstance(exc, httpx.ConnectError)
                        return
                    assert r.status_code == 202, r.text
                    with lock:
                        accepted.append(r.json()["request_id"])

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        wait_until(lambda: len(accepted) >= 150, 60, "150 accepted submits")
        kill_hard(server)
        stop.set()
        for t in threads:
            t.join(60)
        print(f"\nMEASURE API SIGKILL: {len(accepted)} submits answered 202, {in_flight} cut off in flight, {len(cut_off) - in_flight} refused")
        assert in_flight >= 1, "the kill hit no request in flight; nothing was tested"

        receiver.start()
        server = start_server(data, config=None, workers=0, extra_env=server_env())
        # Nothing acknowledged was lost, and nothing is held without its job (or the reverse).
        jobs = {j.id: j for j in store.jobs.list(key_id=key_id)}
        assert set(accepted) <= set(jobs)
        stories = check_books(store, all_terminal=False)
        held = [j for j in jobs.values() if j.status is JobStatus.QUEUED]
        assert all(stories[j.id] == ["hold"] for j in held)
        assert start_balance - balance(store, key_id) == FLUX_DEV_PRICE * len(held)
        print(f"MEASURE API SIGKILL: {len(held) - len(accepted)} unanswered submits had committed")

        with server.client() as client:
            # A client that did not get its answer retries with the same key: one job either way.
            for idem, body in cut_off:
                if idem is None:
                    continue
                job_id = submit(client, key, body, **{"Idempotency-Key": idem})
                assert [j.id for j in store.jobs.list(key_id=key_id) if j.idempotency_key == idem] == [job_id]
            # The final webhooks that were pending before the kill arrive now.
            receiver.wait_terminal(hooked, timeout=60)
            assert {d.status for j in hooked for d in receiver.for_job(j)} == {"CANCELED"}
            # Every job reaches one final status; the money comes back with the releases.
            queued = [j.id for j in store.jobs.list(key_id=key_id, statuses=[JobStatus.QUEUED])]
            for job_id in queued:
                r = client.put(f"/v2/requests/{job_id}/cancel", headers={SUB: key})
                assert r.status_code == 200 and r.json()["status"] == "CANCELED", r.text
        stories = check_books(store)
        assert all(kinds == ["hold", "release"] for kinds in stories.values())
        assert balance(store, key_id) == start_balance
    finally:
        server.stop()
        receiver.stop()
        store.dispose()

