"""The job store on SQLite and PostgreSQL: wallet holds, claiming, leases, fencing, cancel."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegate.exceptions import IdempotencyConflictError, InsufficientBalanceError, RequestNotFoundError
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore, NewJob

from harness import register_worker


def new_job(key_id: str, price: int = 25_000, **kw: object) -> NewJob:
    return NewJob(key_id=key_id, model_id="flux-dev", protocol="queue", params={"prompt": "x"}, price_micros=price, max_attempts=kw.pop("max_attempts", 3), **kw)  # type: ignore[arg-type]


def assert_balanced(store: JobStore) -> None:
    for key_id, balance, ledger in store.keys.balances():
        assert balance == ledger, key_id


def test_hold_capture_release(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    a, _ = store.jobs.submit(new_job(key.id))
    b, _ = store.jobs.submit(new_job(key.id))
    assert store.keys.get(key.id).balance_micros == 50_000
    ja = store.jobs.claim("w")
    assert ja is not None and ja.id == a.id
    store.jobs.finish(a.id, "w", JobStatus.COMPLETED, output={"media": []})
    jb = store.jobs.claim("w")
    assert jb is not None
    store.jobs.finish(b.id, "w", JobStatus.ERROR, error="boom")
    assert store.keys.get(key.id).balance_micros == 75_000
    kinds = [r.kind.value for r in store.keys.ledger(key.id)]
    assert kinds == ["topup", "hold", "hold", "capture", "release"]
    assert_balanced(store)


def test_insufficient_balance_queues_nothing(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=10_000)
    with pytest.raises(InsufficientBalanceError) as err:
        store.jobs.submit(new_job(key.id))
    assert "Required: $0.025" in str(err.value)
    assert store.jobs.list(key_id=key.id) == []
    assert store.keys.get(key.id).balance_micros == 10_000
    assert_balanced(store)


def test_parallel_submits_never_overdraw(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=250_000)  # room for exactly 10 at $0.025

    def submit(_: int) -> str:
        try:
            store.jobs.submit(new_job(key.id))
            return "ok"
        except InsufficientBalanceError:
            return "402"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(submit, range(60)))
    assert results.count("ok") == 10 and results.count("402") == 50
    assert store.keys.get(key.id).balance_micros == 0
    assert len(store.jobs.list(key_id=key.id)) == 10
    assert_balanced(store)


def test_claims_are_exclusive_under_concurrency(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=0)
    ids = {store.jobs.submit(new_job(key.id, price=0))[0].id for _ in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while True:
            job = store.jobs.claim(f"w{n}")
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_claim_order_is_fifo_and_filters_models(store: JobStore) -> None:
    _, key = store.keys.create()
    first, _ = store.jobs.submit(new_job(key.id, price=0))
    other, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="boogu-image", protocol="queue", params={}, price_micros=0, max_attempts=3))
    second, _ = store.jobs.submit(new_job(key.id, price=0))
    assert store.jobs.claim("w", ["boogu-image"]).id == other.id  # type: ignore[union-attr]
    assert store.jobs.claim("w").id == first.id  # type: ignore[union-attr]
    assert store.jobs.claim("w").id == second.id  # type: ignore[union-attr]


def test_a_stalled_workers_job_is_reclaimed_and_only_the_new_owner_finishes(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    job, _ = store.jobs.submit(new_job(key.id, max_attempts=2))
    register_worker(store, "dead")
    assert store.jobs.claim("dead") is not None
    assert store.jobs.recover_stalled(lease_seconds=30) == []  # its heartbeat is fresh
    register_worker(store, "dead", heartbeat_age=60)
    assert [j.id for j in store.jobs.recover_stalled(lease_seconds=30)] == [job.id]
    assert store.workers.get("dead") is None  # forgotten with its jobs
    again = store.jobs.claim("alive")
    assert again is not None and again.id == job.id and again.attempts == 2
    assert store.jobs.finish(job.id, "dead", JobStatus.COMPLETED) is None  # fenced out
    assert store.jobs.finish(job.id, "alive", JobStatus.COMPLETED).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert store.keys.get(key.id).balance_micros == 75_000
    assert_balanced(store)


def test_too_many_attempts_end_in_error_not_charged(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    job, _ = store.jobs.submit(new_job(key.id, max_attempts=1))
    store.jobs.claim("vanished")  # no registry row at all: a worker that died before registering
    store.jobs.recover_stalled(lease_seconds=30)
    ended = store.jobs.get(job.id)
    assert ended.status is JobStatus.ERROR and "not charged" in (ended.error or "")
    assert store.keys.get(key.id).balance_micros == 100_000
    assert_balanced(store)


def test_cancel_queued_releases_and_running_is_flagged(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    queued, _ = store.jobs.submit(new_job(key.id))
    running, _ = store.jobs.submit(new_job(key.id))
    canceled = store.jobs.cancel(queued.id, key.id)
    assert canceled.status is JobStatus.CANCELED
    claimed = store.jobs.claim("w")
    assert claimed is not None and claimed.id == running.id
    flagged = store.jobs.cancel(running.id, key.id)
    assert flagged.status is JobStatus.PROCESSING and flagged.cancel_requested
    assert store.jobs.holds(running.id, "w") is True
    store.jobs.finish(running.id, "w", JobStatus.CANCELED, error="Canceled by the client")
    assert store.keys.get(key.id).balance_micros == 100_000
    _, other = store.keys.create()
    with pytest.raises(RequestNotFoundError):
        store.jobs.cancel(queued.id, other.id)
    assert_balanced(store)


def test_partial_capture_releases_the_difference(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    job, _ = store.jobs.submit(new_job(key.id, price=10_000))
    store.jobs.claim("w")
    done = store.jobs.finish(job.id, "w", JobStatus.COMPLETED, charge_micros=5_000)
    assert done is not None and done.price_micros == 5_000
    assert store.keys.get(key.id).balance_micros == 95_000
    assert_balanced(store)


def test_idempotency_key(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    a, created = store.jobs.submit(new_job(key.id, idempotency_key="k1", request_hash="h1"))
    b, created_again = store.jobs.submit(new_job(key.id, idempotency_key="k1", request_hash="h1"))
    assert created and not created_again and a.id == b.id
    with pytest.raises(IdempotencyConflictError):
        store.jobs.submit(new_job(key.id, idempotency_key="k1", request_hash="other"))
    assert store.keys.get(key.id).balance_micros == 75_000
    assert_balanced(store)


def test_concurrent_same_idempotency_key_charges_once(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=1_000_000)
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: store.jobs.submit(new_job(key.id, idempotency_key="same", request_hash="h"))[0].id, range(16)))
    assert len(ids) == 1
    assert store.keys.get(key.id).balance_micros == 975_000
    assert_balanced(store)


def test_keys_disable_and_authenticate(store: JobStore) -> None:
    from imagegate.exceptions import AuthenticationError, KeyDisabledError

    plaintext, key = store.keys.create(name="a")
    assert store.keys.authenticate(plaintext).id == key.id
    store.keys.set_disabled(key.id)
    with pytest.raises(KeyDisabledError):
        store.keys.authenticate(plaintext)
    with pytest.raises(AuthenticationError):
        store.keys.authenticate("ig_nope")
    # Only a hash is stored.
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT key_hash FROM api_keys").all()
    assert all(plaintext not in r[0] for r in rows)


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_polls_survive_connections_the_server_dropped(store: JobStore) -> None:
    """Status polls and key lookups skip the pre-ping round trip; when the server has dropped their
    pooled connections (a restart), the first read retries on a fresh one instead of failing."""
    plaintext, key = store.keys.create(balance_micros=100_000)
    job, _ = store.jobs.submit(new_job(key.id))
    barrier = threading.Barrier(4)

    def poll() -> None:
        barrier.wait()  # four reads at once: the pool then holds four connections
        store.jobs.get(job.id, key.id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: poll(), range(4)))
    database = store.engine.url.database
    with store.engine.connect() as conn:
        killed = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %(db)s AND pid <> pg_backend_pid()", {"db": database}
        ).scalar_one()
    assert killed >= 4
    for _ in range(6):  # every stale connection of the pool would fail a read without the retry
        assert store.jobs.get(job.id, key.id).status is JobStatus.QUEUED
        assert store.keys.authenticate(plaintext).id == key.id


def test_claims_prefer_loaded_models_within_the_fairness_bound(store: JobStore) -> None:
    _, key = store.keys.create()
    cold, _ = store.jobs.submit(new_job(key.id, price=0))  # flux-dev, oldest
    warm, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="boogu-image", protocol="queue", params={}, price_micros=0, max_attempts=3))
    # A worker holding boogu-image's weights takes its job first, although the flux-dev one is older.
    assert store.jobs.claim("w", loaded=["boogu-image"], affinity_max_age=60).id == warm.id  # type: ignore[union-attr]
    assert store.jobs.claim("w", loaded=["boogu-image"], affinity_max_age=60).id == cold.id  # type: ignore[union-attr]
    # Past the bound, age wins over warmth: a job does not starve behind warm ones.
    old, _ = store.jobs.submit(new_job(key.id, price=0))
    warm2, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="boogu-image", protocol="queue", params={}, price_micros=0, max_attempts=3))
    time.sleep(0.3)
    assert store.jobs.claim("w", loaded=["boogu-image"], affinity_max_age=0.2).id == old.id  # type: ignore[union-attr]
    assert store.jobs.claim("w", loaded=["boogu-image"], affinity_max_age=0.2).id == warm2.id  # type: ignore[union-attr]


def test_queue_position_counts_the_jobs_ahead_of_the_same_model(store: JobStore) -> None:
    _, key = store.keys.create()
    a, _ = store.jobs.submit(new_job(key.id, price=0))
    other, _ = store.jobs.submit(NewJob(key_id=key.id, model_id="boogu-image", protocol="queue", params={}, price_micros=0, max_attempts=3))
    b, _ = store.jobs.submit(new_job(key.id, price=0))
    c, _ = store.jobs.submit(new_job(key.id, price=0))
    assert [store.jobs.queue_position(store.jobs.get(j.id)) for j in (a, other, b, c)] == [0, 0, 1, 2]
    store.jobs.cancel(a.id, key.id)
    assert store.jobs.queue_position(store.jobs.get(c.id)) == 1
    assert store.jobs.queue_position(store.jobs.get(a.id)) is None  # not queued any more


def test_an_acknowledged_cancel_is_never_charged(store: JobStore) -> None:
    """Both orders of a cancel racing the end of a job: flagged first, the job ends CANCELED
    whatever the worker reports; ended first, the cancel answers the final status (charged)."""
    _, key = store.keys.create(balance_micros=100_000)
    job, _ = store.jobs.submit(new_job(key.id))
    store.jobs.claim("w")
    acknowledged = store.jobs.cancel(job.id, key.id)
    assert acknowledged.status is JobStatus.PROCESSING and acknowledged.cancel_requested
    done = store.jobs.finish(job.id, "w", JobStatus.COMPLETED, output={"media": []})
    assert done is not None and done.status is JobStatus.CANCELED and done.output is None
    assert store.keys.get(key.id).balance_micros == 100_000

    late, _ = store.jobs.submit(new_job(key.id))
    store.jobs.claim("w")
    store.jobs.finish(late.id, "w", JobStatus.COMPLETED, output={"media": []})
    answer = store.jobs.cancel(late.id, key.id)
    assert answer.status is JobStatus.COMPLETED and not answer.cancel_requested
    assert store.keys.get(key.id).balance_micros == 75_000
    assert_balanced(store)


def test_cancels_racing_finishes_never_charge_an_acknowledged_cancel(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=10_000_000)
    barrier = threading.Barrier(2)
    outcomes = []
    for _ in range(25):
        job, _ = store.jobs.submit(new_job(key.id, price=1_000))
        store.jobs.claim("w")
        answers: dict[str, object] = {}

        def cancel() -> None:
            barrier.wait()
            answers["cancel"] = store.jobs.cancel(job.id, key.id)

        def finish() -> None:
            barrier.wait()
            answers["finish"] = store.jobs.finish(job.id, "w", JobStatus.COMPLETED, output={"media": []})

        threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = store.jobs.get(job.id)
        acknowledged = not answers["cancel"].status.terminal  # type: ignore[attr-defined]
        outcomes.append(acknowledged)
        if acknowledged:
            assert final.status is JobStatus.CANCELED, "an acknowledged cancel was charged"
        else:
            assert final.status is JobStatus.COMPLETED and answers["cancel"].status is JobStatus.COMPLETED  # type: ignore[attr-defined]
    assert_balanced(store)


def test_the_rate_limit_bucket_is_shared_by_every_store(store: JobStore) -> None:
    """Two stores on one database (two API processes) draw from one bucket per key."""
    from imagegate.exceptions import RateLimitedError
    from imagegate.jobs.keys import RateLimit

    other = JobStore(store.url)
    try:
        _, key = store.keys.create()
        limit = RateLimit(per_second=1.0, burst=4)
        results = []
        for i in range(6):
            s = store if i % 2 else other
            try:
                s.jobs.submit(new_job(key.id, price=0), rate_limit=limit)
                results.append("ok")
            except RateLimitedError as exc:
                results.append("429")
                assert 0 < exc.retry_after <= 1.0
        assert results == ["ok", "ok", "ok", "ok", "429", "429"]
        assert len(store.jobs.list(key_id=key.id)) == 4  # refused submits queued nothing
        time.sleep(1.1)
        store.jobs.submit(new_job(key.id, price=0), rate_limit=limit)  # a token came back
    finally:
        other.dispose()


def test_a_submit_whose_clock_reading_is_behind_the_bucket_takes_one_token(store: JobStore) -> None:
    """Concurrent submits read the time before they wait for the bucket's row, so one may arrive
    with a time earlier than the one stored. At a high rate that gap used to become a debt of
    tokens (a 429 with a full bucket); time now never runs backwards in the bucket."""
    from imagegate.jobs.keys import RateLimit

    _, key = store.keys.create()
    limit = RateLimit(per_second=10_000.0, burst=100)
    now = time.time()
    with store.db.transaction() as conn:
        store.keys.take_token(conn, key.id, limit, now)
    with store.db.transaction() as conn:
        store.keys.take_token(conn, key.id, limit, now - 0.05)  # 50 ms behind: was 500 tokens short
    with store.db.transaction() as conn:
        store.keys.take_token(conn, key.id, limit, now)
