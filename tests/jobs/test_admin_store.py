"""The operator's side of the store on SQLite and PostgreSQL: audited changes, listings, usage."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from imagegate.exceptions import ConflictError, RequestNotFoundError, ValidationError
from imagegate.jobs import schema
from imagegate.jobs.audit import Actor, AuditAction, AuditFilter
from imagegate.jobs.keys import hash_key
from imagegate.jobs.paging import Page, TimeRange
from imagegate.jobs.queue import JobFilter
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore, NewJob
from imagegate.jobs.usage import UsageFilter, UsageGroup

CLI = Actor.CLI
DAY = 86400.0
# 2025-03-10T00:00:00Z: a midnight, so jobs can end on either side of it.
MIDNIGHT = 1741564800.0
NSFW_VERDICTS = {"media": [], "has_nsfw_concepts": [False, False]}  # what a two-image job returns


def new_job(key_id: str, model_id: str = "flux-dev", price: int = 25_000, **kw: Any) -> NewJob:
    return NewJob(key_id=key_id, model_id=model_id, protocol="queue", params={"prompt": "x"}, price_micros=price, max_attempts=3, **kw)


def audit_rows(store: JobStore, **where: Any) -> list[Any]:
    return store.audit.page(AuditFilter(**where), limit=500).items


def everything(fetch: Callable[[str | None], Page[Any]]) -> list[list[Any]]:
    """Every page of a listing, following next_cursor."""
    pages, cursor = [], None
    while True:
        page = fetch(cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def finish_as(store: JobStore, job_id: str, status: JobStatus, completed_at: float, **kw: Any) -> None:
    """Run the job to ``status`` as a worker would, then place its end at ``completed_at`` (the
    day boundaries under test)."""
    claimed = store.jobs.claim("w-test", [store.jobs.get(job_id).model_id])
    assert claimed is not None and claimed.id == job_id
    store.jobs.finish(job_id, "w-test", status, **kw)
    with store.engine.begin() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.id == job_id).values(completed_at=completed_at))


def assert_balanced(store: JobStore) -> None:
    for key_id, balance, ledger in store.keys.balances():
        assert balance == ledger, key_id


# -- audited changes ----------------------------------------------------------------------------------


def test_every_change_writes_its_audit_row(store: JobStore) -> None:
    admin = store.admin
    _, key = admin.create_key(CLI, name="ops", balance_micros=1_000_000)
    admin.topup(CLI, key.id, 500_000)
    admin.set_key_disabled(CLI, key.id, True)
    admin.set_key_disabled(CLI, key.id, False)
    rotated = admin.rotate_webhook_secret(CLI, key.id)
    admin.set_model_enabled(Actor.ADMIN_API, "flux-dev", False)
    admin.set_model_enabled(Actor.ADMIN_API, "flux-dev", True)
    admin.set_model_price(Actor.ADMIN_API, "flux-dev", 20_000)
    admin.set_model_price(Actor.ADMIN_API, "flux-dev", None)
    hooked, _ = store.jobs.submit(new_job(key.id, webhook_url="https://example.com/hook", webhook_mode="terminal"))
    admin.cancel_job(Actor.ADMIN_API, hooked.id)
    event = admin.redeliver_webhook(Actor.ADMIN_API, hooked.id)
    _, token = admin.rotate_admin_token(CLI)

    rows = list(reversed(audit_rows(store)))
    assert [(r.actor, r.action, r.target) for r in rows] == [
        ("cli", AuditAction.KEY_CREATE.value, key.id),
        ("cli", AuditAction.KEY_TOPUP.value, key.id),
        ("cli", AuditAction.KEY_DISABLE.value, key.id),
        ("cli", AuditAction.KEY_ENABLE.value, key.id),
        ("cli", AuditAction.KEY_ROTATE_WEBHOOK_SECRET.value, key.id),
        ("admin-api", AuditAction.MODEL_DISABLE.value, "flux-dev"),
        ("admin-api", AuditAction.MODEL_ENABLE.value, "flux-dev"),
        ("admin-api", AuditAction.MODEL_PRICE_SET.value, "flux-dev"),
        ("admin-api", AuditAction.MODEL_PRICE_CLEAR.value, "flux-dev"),
        ("admin-api", AuditAction.JOB_CANCEL.value, hooked.id),
        ("admin-api", AuditAction.WEBHOOK_REDELIVER.value, hooked.id),
        ("cli", AuditAction.ADMIN_TOKEN_ROTATE.value, "admin_token"),
    ]
    details = [r.detail for r in rows]
    assert details[0] == {"name": "ops", "balance": "1.000000"}
    assert details[1] == {"amount": "0.500000", "balance": "1.500000"}
    assert details[7] == {"price": "0.020000", "previous": None}
    assert details[8] == {"price": None, "previous": "0.020000"}
    assert details[9] == {"key_id": key.id, "status": "CANCELED", "cancel_requested": False}
    assert event is not None and details[10]["event_id"] == event.id and details[10]["event_type"] == "canceled"
    assert details[11] == {"prefix": token.token_prefix}
    # Secrets never reach the log.
    assert all(rotated.webhook_secret not in str(d) for d in details)
    assert all(r.at > 0 for r in rows)


def test_a_change_and_its_audit_row_commit_or_roll_back_together(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100)
    with pytest.raises(RuntimeError):
        with store.db.transaction() as conn:
            store.keys.topup(key.id, 5_000, conn)
            store.audit.record(conn, CLI, AuditAction.KEY_TOPUP, key.id, {"amount": "0.005000"})
            raise RuntimeError("the process dies before the commit")
    assert store.keys.get(key.id).balance_micros == 100
    assert audit_rows(store) == []
    with pytest.raises(RequestNotFoundError):
        store.admin.topup(CLI, "key_missing", 5_000)
    assert audit_rows(store) == []
    assert_balanced(store)


def test_concurrent_topups_keep_the_balance_equal_to_the_ledger(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=0)
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: store.admin.topup(Actor.ADMIN_API, key.id, 10_000), range(40)))
    assert store.keys.get(key.id).balance_micros == 400_000 == store.keys.ledger_sum(key.id)
    assert len(audit_rows(store, action=AuditAction.KEY_TOPUP.value, target=key.id)) == 40
    assert_balanced(store)


def test_the_operator_cancels_any_keys_job_with_the_clients_settlement(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=100_000)
    queued, _ = store.jobs.submit(new_job(key.id))
    running, _ = store.jobs.submit(new_job(key.id))
    canceled = store.admin.cancel_job(Actor.ADMIN_API, queued.id)
    assert canceled.status is JobStatus.CANCELED
    assert store.jobs.claim("w") is not None
    flagged = store.admin.cancel_job(Actor.ADMIN_API, running.id)
    assert flagged.status is JobStatus.PROCESSING and flagged.cancel_requested
    store.jobs.finish(running.id, "w", JobStatus.CANCELED, error="Canceled")
    assert store.keys.get(key.id).balance_micros == 100_000  # both holds released
    with pytest.raises(ConflictError, match="already ended"):
        store.admin.cancel_job(Actor.ADMIN_API, queued.id)
    with pytest.raises(RequestNotFoundError):
        store.admin.cancel_job(Actor.ADMIN_API, "flux-dev_missing")
    assert len(audit_rows(store, action=AuditAction.JOB_CANCEL.value)) == 2
    assert_balanced(store)


def test_runtime_prices_and_switches(store: JobStore) -> None:
    store.admin.set_model_price(CLI, "flux-dev", 40_000)
    store.admin.set_model_enabled(CLI, "flux-pro", False)
    states = store.models.states()
    assert states["flux-dev"].enabled and states["flux-dev"].price_micros == 40_000
    assert not states["flux-pro"].enabled and states["flux-pro"].price_micros is None
    assert store.models.all() == {"flux-dev": True, "flux-pro": False}
    assert store.models.price_override("flux-dev") == 40_000 and store.models.price_override("boogu-image") is None
    store.admin.set_model_price(CLI, "flux-dev", None)
    assert store.models.price_override("flux-dev") is None and store.models.states()["flux-dev"].enabled


def test_rotating_the_admin_token_keeps_only_the_new_hash(store: JobStore) -> None:
    assert store.admin_tokens.current() is None
    first, _ = store.admin.rotate_admin_token(CLI)
    second, stored = store.admin.rotate_admin_token(CLI)
    assert first != second and second.startswith("iga_") and len(second) > 40
    current = store.admin_tokens.current()
    assert current == stored and current.token_hash == hash_key(second) and second.startswith(current.token_prefix)
    with store.engine.connect() as conn:
        assert conn.execute(schema.admin_tokens.select()).all() == [(hash_key(second), stored.token_prefix, stored.created_at)]


# -- listings ------------------------------------------------------------------------------------------


def test_listings_page_through_every_row_once_newest_first(store: JobStore) -> None:
    keys = [store.admin.create_key(CLI, name=f"k{i}", balance_micros=1_000_000)[1] for i in range(7)]
    pages = everything(lambda c: store.keys.page(limit=3, cursor=c))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [k.id for p in pages for k in p] == [k.id for k in reversed(keys)]
    store.admin.set_key_disabled(CLI, keys[2].id, True)
    assert [k.id for k in store.keys.page(limit=50, disabled=True).items] == [keys[2].id]

    first = keys[0]
    jobs = [store.jobs.submit(new_job(first.id, model_id="flux-dev" if i % 2 else "boogu-image", price=1_000))[0] for i in range(5)]
    ledger = [e for p in everything(lambda c: store.keys.ledger_page(first.id, limit=2, cursor=c)) for e in p]
    assert [e.id for e in ledger] == sorted((e.id for e in store.keys.ledger(first.id)), reverse=True)
    assert [e.kind.value for e in ledger] == ["hold"] * 5 + ["topup"]

    listed = [j for p in everything(lambda c: store.jobs.page(JobFilter(key_id=first.id), limit=2, cursor=c)) for j in p]
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)]
    boogu = store.jobs.page(JobFilter(model_id="boogu-image"), limit=50).items
    assert [j.id for j in boogu] == [jobs[4].id, jobs[2].id, jobs[0].id]
    store.admin.cancel_job(CLI, jobs[1].id)
    assert [j.id for j in store.jobs.page(JobFilter(statuses=(JobStatus.CANCELED,)), limit=50).items] == [jobs[1].id]
    window = TimeRange(since=jobs[1].created_at, until=jobs[3].created_at)
    assert [j.id for j in store.jobs.page(JobFilter(period=window), limit=50).items] == [jobs[2].id, jobs[1].id]
    assert store.jobs.page(JobFilter(key_id=keys[1].id), limit=50).items == []

    audit = [r for p in everything(lambda c: store.audit.page(AuditFilter(), limit=4, cursor=c)) for r in p]
    assert [r.id for r in audit] == sorted((r.id for r in audit), reverse=True) and len(audit) == 9
    assert [r.action for r in audit_rows(store, action="key.disable")] == ["key.disable"]


def test_webhook_deliveries_page_by_state_and_request(store: JobStore) -> None:
    _, key = store.keys.create(balance_micros=0)
    hooked = [
        store.jobs.submit(new_job(key.id, price=0, webhook_url=f"https://example.com/{i}", webhook_mode="sync"))[0] for i in range(3)
    ]
    store.jobs.cancel(hooked[0].id, key.id)
    events = [e for p in everything(lambda c: store.outbox.page(limit=2, cursor=c)) for e in p]
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert sorted(e.event_type for e in events) == ["canceled", "queued", "queued", "queued"]
    only = store.outbox.page(job_id=hooked[0].id, limit=50).items
    assert [e.event_type for e in only] == ["canceled", "queued"]
    assert len(store.outbox.page(state="pending", limit=50).items) == 4
    assert store.outbox.page(state="delivered", limit=50).items == []


def test_a_cursor_the_listing_did_not_issue_is_refused(store: JobStore) -> None:
    for _ in range(3):
        store.keys.create()
    page = store.keys.page(limit=1)
    assert page.next_cursor
    for bad in ("not base64!", page.next_cursor[:-2], "WzFd", store.audit.page(AuditFilter(), limit=1).next_cursor or "W10"):
        with pytest.raises(ValidationError) as err:
            store.keys.page(limit=1, cursor=bad)
        assert err.value.field == "cursor"


# -- usage ---------------------------------------------------------------------------------------------


def test_usage_sums_requests_images_and_spend_per_key_model_and_utc_day(store: JobStore) -> None:
    _, a = store.keys.create(balance_micros=1_000_000)
    _, b = store.keys.create(balance_micros=1_000_000)
    ends = [
        # key, model, price, status, ended at, charge
        (a, "flux-dev", 25_000, JobStatus.COMPLETED, MIDNIGHT - 1, None),  # the last second of 9 March
        (a, "flux-dev", 25_000, JobStatus.COMPLETED, MIDNIGHT, 10_000),  # the first of 10 March, partly charged
        (a, "flux-dev", 25_000, JobStatus.FAILED, MIDNIGHT + 60, None),  # charged, no image
        (a, "boogu-image", 30_000, JobStatus.ERROR, MIDNIGHT + 120, None),  # not charged
        (b, "flux-dev", 25_000, JobStatus.COMPLETED, MIDNIGHT + DAY + 5, None),
    ]
    for key, model, price, status, at, charge in ends:
        job, _ = store.jobs.submit(new_job(key.id, model_id=model, price=price))
        output = NSFW_VERDICTS if status is JobStatus.COMPLETED else None
        finish_as(store, job.id, status, at, output=output, error=None if output else "x", charge_micros=charge)
    store.jobs.submit(new_job(a.id))  # still queued: not in any usage

    everything_grouped = store.usage.page(UsageFilter(), list(UsageGroup), limit=50).items
    day9, day10, day11 = (int(MIDNIGHT // DAY) - 1, int(MIDNIGHT // DAY), int(MIDNIGHT // DAY) + 1)
    assert [(r.day, r.key_id, r.model_id, r.requests, r.images, r.spend_micros) for r in everything_grouped] == sorted(
        [
            (day9, a.id, "flux-dev", 1, 2, 25_000),
            (day10, a.id, "boogu-image", 1, 0, 0),
            (day10, a.id, "flux-dev", 2, 2, 35_000),
            (day11, b.id, "flux-dev", 1, 2, 25_000),
        ],
        key=lambda r: (-r[0], r[1], r[2]),
    )
    per_key = store.usage.page(UsageFilter(), [UsageGroup.KEY], limit=50).items
    assert {(r.key_id, r.requests, r.images, r.spend_micros) for r in per_key} == {(a.id, 4, 4, 60_000), (b.id, 1, 2, 25_000)}
    assert all(r.day is None and r.model_id is None for r in per_key)

    tenth = UsageFilter(period=TimeRange(since=MIDNIGHT, until=MIDNIGHT + DAY))
    per_model = store.usage.page(tenth, [UsageGroup.MODEL], limit=50).items
    assert [(r.model_id, r.requests, r.spend_micros) for r in per_model] == [("boogu-image", 1, 0), ("flux-dev", 2, 35_000)]
    totals = store.usage.totals(tenth)
    assert (totals.requests, totals.images, totals.spend_micros) == (3, 2, 35_000)
    only_b = store.usage.totals(UsageFilter(key_id=b.id, model_id="flux-dev"))
    assert (only_b.requests, only_b.images, only_b.spend_micros) == (1, 2, 25_000)

    pages = everything(lambda c: store.usage.page(UsageFilter(), list(UsageGroup), limit=1, cursor=c))
    assert [r for p in pages for r in p] == everything_grouped and len(pages) == 4
    by_day = everything(lambda c: store.usage.page(UsageFilter(), [UsageGroup.DAY], limit=2, cursor=c))
    assert [[r.day for r in p] for p in by_day] == [[day11, day10], [day9]]
    assert_balanced(store)
