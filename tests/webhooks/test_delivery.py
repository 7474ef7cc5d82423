"""End to end through the real store, the outbox hook, the deliverer loop and loopback HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import imagegate
from imagegate.runtime.housekeeping import sweep
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore
from imagegate.media.storage import open_storage
from imagegate.webhooks.deliverer import RetryPolicy
from imagegate.jobs.outbox import DELIVERED, DROPPED, FAILED, PENDING
from imagegate.webhooks.signing import SignatureError, verify

from harness import register_worker

from .conftest import OUTPUT, Kit, Receiver, Reply

KitFactory = Callable[..., Kit]


def test_terminal_event_survives_failures_and_arrives_once(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store, webhook_timeout_seconds=0.5)
    receiver.script = [
        Reply(500, body=b"boom"),
        Reply(200, delay=1.5),  # stalls past the timeout: must not count
        Reply(429, headers={"Retry-After": "1"}),
        Reply(200),
    ]
    job = kit.submit(receiver.url())
    kit.run(job)
    assert [e.event_type for e in kit.outbox.events_for_job(job.id)] == ["completed"]  # terminal mode: nothing else
    kit.deliverer()

    got = receiver.wait_for(4)
    event = kit.wait_state(job.id, "completed", DELIVERED)
    time.sleep(0.4)  # a delivered event is never sent again
    assert len(receiver.requests) == 4
    assert {r.webhook_id for r in got} == {event.id}
    assert got[3].at - got[2].at >= 0.95, "Retry-After: 1 was not honoured"
    for r in got:
        verify(kit.key.webhook_secret, r.headers, r.body)
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"] == "imagegate-webhooks"
    body = got[-1].json
    assert body["request_id"] == job.id and body["status"] == "COMPLETED" and body["model_id"] == "p-image"
    assert body["output"]["media_url"] == ["https://images.example.test/media/p-image/out.png"]

    attempts = kit.outbox.attempts_for_job(job.id)
    assert [a.status_code for a in attempts] == [500, None, 429, 200]
    assert "boom" in (attempts[0].error or "") and "timed out" in (attempts[1].error or "")
    assert attempts[1].duration_ms < 1200
    assert event.attempts == 4 and event.last_status_code == 200


def test_signature_uses_the_secret_at_delivery_time(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store)
    job = kit.submit(receiver.url())
    kit.run(job)
    old_secret = kit.key.webhook_secret
    new_secret = sqlite_store.keys.rotate_webhook_secret(kit.key.id).webhook_secret
    kit.deliverer()
    (got,) = receiver.wait_for(1)
    verify(new_secret, got.headers, got.body)
    with pytest.raises(SignatureError):
        verify(old_secret, got.headers, got.body)
    with pytest.raises(SignatureError):
        verify(new_secret, got.headers, got.body.replace(b"COMPLETED", b"FAILED"))


def test_sync_mode_sends_every_status_throttled_progress_and_the_end(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store)
    kit.deliverer()
    job = kit.submit(receiver.url(), "sync")
    claimed = kit.claim(job)
    receiver.wait_for(2)  # queued, start
    began = time.monotonic()
    for step in range(1, 31):  # 30 updates over ~1.5 s
        assert kit.store.jobs.progress(claimed.id, "worker-1", step / 40) is False
        time.sleep(0.05)
    updating = time.monotonic() - began
    kit.finish(claimed)
    kit.wait_state(job.id, "completed", DELIVERED)

    got = receiver.requests
    statuses = [r.json["status"] for r in got]
    assert statuses[:2] == ["QUEUED", "PROCESSING"] and statuses[-1] == "COMPLETED"
    progress = [r for r in got[2:-1]]
    assert all(r.json["status"] == "PROCESSING" for r in progress)
    assert 2 <= len(progress) <= updating / 0.5 + 1, [r.json["progress"] for r in progress]
    gaps = [b.at - a.at for a, b in zip(progress, progress[1:], strict=False)]
    assert all(g >= 0.45 for g in gaps), gaps
    values = [r.json["progress"] for r in progress]
    assert values == sorted(values) and values[-1] > values[0]
    ids = [r.webhook_id for r in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("mode", ["sync", "events"])
def test_a_reclaimed_job_starts_once(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver, mode: str) -> None:
    """A worker that vanished mid-job hands it to the next one: the receiver sees one start, then
    the end, not a second start."""
    kit = kit_factory(sqlite_store)
    kit.deliverer()
    job = kit.submit(receiver.url(), mode)
    first = kit.store.jobs.claim("worker-1", [job.model_id])
    assert first is not None and first.id == job.id
    register_worker(kit.store, "worker-1", heartbeat_age=120)  # it stopped heartbeating
    assert [j.id for j in kit.store.jobs.recover_stalled(lease_seconds=60)] == [job.id]
    again = kit.store.jobs.claim("worker-2", [job.model_id])
    assert again is not None and again.attempts == 2
    assert kit.store.jobs.finish(job.id, "worker-2", JobStatus.COMPLETED, output=OUTPUT) is not None
    kit.wait_state(job.id, "completed", DELIVERED)
    statuses = [r.json["status"] for r in receiver.requests]
    assert statuses == (["QUEUED", "PROCESSING", "COMPLETED"] if mode == "sync" else ["PROCESSING", "COMPLETED"])


def test_events_filter(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store)
    cases = [
        (["start", "completed"], JobStatus.COMPLETED, ["PROCESSING", "COMPLETED"]),
        (["completed"], JobStatus.FAILED, ["FAILED"]),
        (["failed"], JobStatus.COMPLETED, []),
        (["failed"], JobStatus.ERROR, ["ERROR"]),
    ]
    jobs = []
    for i, (events, _end, _want) in enumerate(cases):
        jobs.append(kit.submit(receiver.url(f"/case{i}"), "events", events))
    for job, (_events, end, _want) in zip(jobs, cases, strict=True):
        claimed = kit.claim(job)
        kit.store.jobs.progress(claimed.id, "worker-1", 0.5)
        kit.finish(claimed, end, error=None if end is JobStatus.COMPLETED else "bad input")
    kit.deliverer()
    for i, (_events, _end, want) in enumerate(cases):
        if want:
            receiver.wait_for(len(want), path=f"/case{i}")
    time.sleep(0.3)
    for i, (events, _end, want) in enumerate(cases):
        assert [r.json["status"] for r in receiver.of(f"/case{i}")] == want, (events, receiver.of(f"/case{i}"))

    everything = kit.submit(receiver.url("/all"), "events", ["*"])
    claimed = kit.claim(everything)
    receiver.wait_for(1, path="/all")
    kit.store.jobs.progress(claimed.id, "worker-1", 0.5)
    receiver.wait_for(2, path="/all")
    kit.finish(claimed)
    got = receiver.wait_for(3, path="/all")
    time.sleep(0.2)
    assert [(r.json["status"], r.json["progress"]) for r in receiver.of("/all")] == [
        ("PROCESSING", 0.0),
        ("PROCESSING", 0.5),
        ("COMPLETED", 1.0),
    ], got


def test_batch_and_dojo_payloads(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store)
    batch = kit.submit(receiver.url("/batch"), "batch", protocol="batch", model_id="flux-1-schnell")
    dojo = kit.submit(receiver.url("/dojo"), "terminal", protocol="dojo", model_id="boogu-image-edit")
    kit.run(batch)
    kit.run(dojo, JobStatus.FAILED, error="image 1 could not be fetched")
    kit.deliverer()
    (b,) = receiver.wait_for(1, path="/batch")
    (d,) = receiver.wait_for(1, path="/dojo")
    assert b.json["requestId"] == batch.id and b.json["status"] == "completed"
    assert b.json["output"] == "https://images.example.test/media/p-image/out.png" and isinstance(b.json["completedAt"], int)
    assert d.json["jobId"] == dojo.id and d.json["status"] == "failed" and d.json["error"] == "image 1 could not be fetched"


def test_events_of_a_request_arrive_in_order(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store)
    receiver.script = [Reply(500), Reply(500)]
    kit.deliverer(policy=RetryPolicy(base_delay=1.0, max_delay=1.0, jitter=0.0))
    job = kit.submit(receiver.url(), "events", ["start", "completed"])
    claimed = kit.claim(job)
    receiver.wait_for(1)
    deadline = time.monotonic() + 5
    while kit.outbox.attempts_for_job(job.id) == []:  # the start event failed once and waits 1 s
        assert time.monotonic() < deadline
        time.sleep(0.01)
    finished_at = time.time()
    kit.finish(claimed)  # the final event now exists, but must not overtake the pending start
    kit.wait_state(job.id, "completed", DELIVERED)
    got = receiver.requests
    assert [r.json["status"] for r in got] == ["PROCESSING", "PROCESSING", "COMPLETED"]
    assert got[1].at > finished_at  # the start was still pending when the final event existed
    start = kit.event(job.id, "start")
    assert start.state == DROPPED and "superseded" in (start.last_error or "")


def test_a_slow_receiver_delays_neither_other_targets_nor_cancels(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store, webhook_timeout_seconds=5.0)
    gate = threading.Event()
    receiver.script = [Reply(200, gate=gate)]
    slow = kit.submit(receiver.url("/slow"))
    fast = kit.submit(receiver.url("/fast"))
    waiting = kit.submit(receiver.url("/cancel"))
    kit.deliverer()
    try:
        kit.run(slow)
        receiver.wait_for(1, path="/slow")  # now stuck inside the slow receiver until the gate opens
        kit.run(fast)
        receiver.wait_for(1, path="/fast", timeout=4.0)
        t1 = time.monotonic()
        canceled = kit.store.jobs.cancel(waiting.id, kit.key.id)
        assert canceled.status is JobStatus.CANCELED and time.monotonic() - t1 < 2.0
        (c,) = receiver.wait_for(1, path="/cancel", timeout=4.0)
        assert c.json["status"] == "CANCELED"
        slow_event = kit.event(slow.id, "completed")
        assert slow_event.state == PENDING and slow_event.lease_expires_at is not None  # still in flight
    finally:
        gate.set()
    kit.wait_state(slow.id, "completed", DELIVERED)


def test_410_stops_every_delivery_for_the_request(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store)
    receiver.default = Reply(410)
    # Events already waiting when the 410 comes are dropped with it...
    waiting = kit.submit(receiver.url("/waiting"), "sync")
    kit.run(waiting)
    kit.deliverer()
    receiver.wait_for(1, path="/waiting")
    # ...and events of later transitions are never sent.
    later = kit.submit(receiver.url("/later"), "sync")
    receiver.wait_for(1, path="/later")
    kit.wait_state(later.id, "queued", DROPPED)
    claimed = kit.claim(later)
    kit.store.jobs.progress(claimed.id, "worker-1", 0.3)
    kit.finish(claimed)
    time.sleep(0.5)
    assert len(receiver.of("/waiting")) == 1 and len(receiver.of("/later")) == 1
    for job, kinds in ((waiting, ["queued", "start", "completed"]), (later, ["queued", "start", "progress", "completed"])):
        events = kit.outbox.events_for_job(job.id)
        assert [e.event_type for e in events] == kinds
        assert all(e.state == DROPPED for e in events)
        assert events[0].last_status_code == 410 and "410" in (events[-1].last_error or "")


def test_every_resolved_address_is_tried_in_turn(
    sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with several addresses: the first that accepts the connection gets the delivery.
    127.0.0.2 has nothing listening on the receiver's port (the receiver binds 127.0.0.1 only)."""
    real = socket.getaddrinfo
    answers = {"localhost": ["127.0.0.2", "127.0.0.1"], "nowhere.localhost": ["127.0.0.2", "127.0.0.3"]}

    def resolver(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    kit = kit_factory(sqlite_store)
    reached = kit.submit(f"http://localhost:{receiver.port}/multi")
    unreachable = kit.submit(f"https://nowhere.localhost:{receiver.port}/none")
    kit.run(reached)
    kit.run(unreachable)
    deliverer = kit.deliverer(start=False)
    assert deliverer.deliver_due_once() == 2
    assert len(receiver.wait_for(1, path="/multi")) == 1
    assert [a.status_code for a in kit.outbox.attempts_for_job(reached.id)] == [200]
    (failed,) = kit.outbox.attempts_for_job(unreachable.id)
    assert failed.status_code is None and "connection refused" in (failed.error or "").lower(), failed.error


def test_private_addresses_are_refused_at_delivery_time(sqlite_store: JobStore, kit_factory: KitFactory) -> None:
    kit = kit_factory(sqlite_store, allow_http_webhooks=False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        # https to a *name* passes the submit-time check; the name resolves to loopback.
        by_name = kit.submit(f"https://localhost:{port}/hook")
        plain = kit.submit(f"http://127.0.0.1:{port}/hook")
        kit.run(by_name)
        kit.run(plain)
        kit.deliverer()
        deadline = time.monotonic() + 5
        while not kit.outbox.attempts_for_job(by_name.id) or not kit.outbox.attempts_for_job(plain.id):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = kit.outbox.attempts_for_job(by_name.id)[0]
        assert refused.status_code is None
        assert "refused" in (refused.error or "") and "loopback" in (refused.error or "")
        # The policy answers the same every time: the event fails at once instead of being
        # retried for the whole window.
        event = kit.wait_state(by_name.id, "completed", FAILED)
        assert event.attempts == 1 and event.last_error == refused.error
        time.sleep(0.3)
        assert len(kit.outbox.attempts_for_job(by_name.id)) == 1
        assert "https" in (kit.wait_state(plain.id, "completed", FAILED).last_error or "")
        with pytest.raises(socket.timeout):
            listener.accept()  # not one connection reached the private address
    finally:
        listener.close()


def test_deliveries_are_exactly_once_across_concurrent_deliverers(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store)
    jobs = [kit.submit(receiver.url()) for _ in range(24)]
    for job in jobs:
        kit.run(job)
    for _ in range(3):
        kit.deliverer(concurrency=4)
    got = receiver.wait_for(24)
    time.sleep(0.4)
    assert len(receiver.requests) == 24
    assert sorted(r.json["request_id"] for r in got) == sorted(j.id for j in jobs)
    assert len({r.webhook_id for r in got}) == 24


SUBPROCESS_DELIVERER = """
import sys, threading
from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.webhooks.deliverer import Deliverer
store = JobStore(sys.argv[1])
settings = Settings(allow_http_webhooks=True, webhook_timeout_seconds=30, webhook_retry_hours=0.01)
Deliverer(store, settings, lease_seconds=1.5, poll_interval=0.02).run_forever(threading.Event())
"""


def test_a_killed_deliverer_leaves_the_event_pending_for_the_next(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store)
    gate = threading.Event()
    receiver.script = [Reply(200, gate=gate)]
    job = kit.submit(receiver.url())
    kit.run(job)
    env = {**os.environ, "PYTHONPATH": str(Path(imagegate.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", SUBPROCESS_DELIVERER, sqlite_store.url], env=env)
    try:
        (first,) = receiver.wait_for(1, timeout=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gate.set()
    assert kit.event(job.id, "completed").state == PENDING  # the kill recorded nothing
    kit.deliverer()
    second = receiver.wait_for(2)[1]
    event = kit.wait_state(job.id, "completed", DELIVERED)
    assert second.webhook_id == first.webhook_id == event.id
    assert second.at - first.at >= 1.0  # not before the dead deliverer's lease ran out
    assert [a.status_code for a in kit.outbox.attempts_for_job(job.id)] == [200]


def test_default_schedule_and_windows(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store, webhook_retry_hours=25.0)
    receiver.default = Reply(500)
    job = kit.submit(receiver.url(), "events", ["start", "completed"])
    claimed = kit.claim(job)
    kit.finish(claimed)
    kit.deliverer(policy=RetryPolicy())  # the production schedule: 5 s, doubling, ±20 %
    receiver.wait_for(2)
    time.sleep(0.2)
    start, done = kit.event(job.id, "start"), kit.event(job.id, "completed")
    assert start.deliver_until - start.created_at == pytest.approx(60.0)
    assert done.deliver_until - done.created_at == pytest.approx(25 * 3600.0)
    assert start.state == DROPPED  # failed once, and the final event already waits behind it
    (last,) = [a for a in kit.outbox.attempts_for_job(job.id) if a.event_type == "completed"]
    assert done.state == PENDING and done.attempts == 1
    assert 4.0 <= done.next_attempt_at - last.attempted_at <= 6.5


def test_retries_end_with_the_window(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(sqlite_store, webhook_retry_hours=2.0 / 3600)  # a two-second window
    receiver.default = Reply(503)
    job = kit.submit(receiver.url())
    kit.run(job)
    kit.deliverer(policy=RetryPolicy(base_delay=0.3, max_delay=5.0, jitter=0.0))
    event = kit.wait_state(job.id, "completed", FAILED)
    assert "retry window" in (event.last_error or "")
    times = [a.attempted_at for a in kit.outbox.attempts_for_job(job.id)]
    # 0, 0.3, 0.9 (next would be 2.1), then one last try at the end of the window instead of none
    assert len(times) == 4 and times[-1] - event.deliver_until == pytest.approx(0.0, abs=0.15)


def test_parse_retry_after() -> None:
    from email.utils import formatdate

    from imagegate.webhooks.deliverer import parse_retry_after

    now = time.time()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0, abs=1.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_the_official_library_verifies_a_real_delivery(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    from imagegate.webhooks.signing import normalize_secret

    kit = kit_factory(sqlite_store)
    job = kit.submit(receiver.url())
    kit.run(job)
    kit.deliverer()
    (got,) = receiver.wait_for(1)
    verified = standardwebhooks.Webhook(normalize_secret(kit.key.webhook_secret)).verify(got.body, got.headers)
    assert verified["request_id"] == job.id


def test_finished_deliveries_are_purged_after_their_retention(store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    kit = kit_factory(store, webhook_retention_days=2)
    done, waiting = kit.submit(receiver.url()), kit.submit(receiver.url("/down"))
    receiver.script = [Reply(200)]
    kit.run(done)
    deliverer = kit.deliverer(start=False)
    assert deliverer.deliver_due_once() == 1
    delivered = kit.wait_state(done.id, "completed", DELIVERED)
    kit.run(waiting)  # its event stays pending: nothing ever claims it here
    assert len(kit.outbox.attempts_for_job(done.id)) == 1

    # Within the retention nothing goes; past it the finished event and its attempts go, and the
    # pending one stays however old it is. The sweep is the one `imagegate serve` runs hourly.
    storage = open_storage(kit.settings.resolved_storage_url)
    early = sweep(store, kit.settings, storage, now=delivered.next_attempt_at + 2 * 86400 - 60)
    assert early["webhook deliveries"] == 0
    late = sweep(store, kit.settings, storage, now=delivered.next_attempt_at + 2 * 86400 + 60)
    assert late == {"webhook deliveries": 1, "jobs' media": 0, "expired uploads": 0}  # media retention is off by default
    assert kit.outbox.events_for_job(done.id) == [] and kit.outbox.attempts_for_job(done.id) == []
    assert [e.state for e in kit.outbox.events_for_job(waiting.id)] == [PENDING]
    assert kit.outbox.pending_count() == 1

    assert kit.outbox.purge_expired(0, now=time.time() + 10 * 365 * 86400) == 0  # 0 keeps them
    assert [e.state for e in kit.outbox.events_for_job(waiting.id)] == [PENDING]


def test_an_event_recorded_by_an_older_release_is_sent_with_its_stored_body(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    """Events written before snapshots were kept carry their rendered body; an upgrade sends it as is."""
    from imagegate.jobs import schema

    kit = kit_factory(sqlite_store)
    job = kit.submit(receiver.url())
    kit.run(job)
    legacy = b'{"request_id":"%s","status":"COMPLETED","legacy":true}' % job.id.encode()
    with sqlite_store.engine.begin() as conn:
        conn.execute(
            schema.webhook_events.update()
            .where(schema.webhook_events.c.job_id == job.id)
            .values(payload=legacy.decode(), job_snapshot=None)
        )
    kit.deliverer()
    (got,) = receiver.wait_for(1)
    assert got.body == legacy
    verify(kit.key.webhook_secret, got.headers, got.body)


def test_the_idle_deliverer_wakes_for_new_events_and_for_due_retries(sqlite_store: JobStore, kit_factory: KitFactory, receiver: Receiver) -> None:
    """Without a fixed poll, the deliverer sleeps until an event is announced or a retry is due,
    whatever its (here: long) fallback poll says."""
    kit = kit_factory(sqlite_store, poll_fallback_seconds=60)
    receiver.script = [Reply(503), Reply(200)]
    kit.deliverer(poll_interval=None)
    time.sleep(0.5)  # idle, asleep on a 60 s fallback
    started = time.time()  # the receiver stamps arrivals with the wall clock
    job = kit.submit(receiver.url())
    kit.run(job)
    first, second = receiver.wait_for(2, timeout=20)
    assert first.at - started < 2.0, "a new event waited for the fallback poll"
    # The retry went out when it was due (FAST's first backoff), not a minute later.
    assert second.at - first.at < 5.0
    kit.wait_state(job.id, "completed", DELIVERED)
