"""The webhook outbox: every statement on ``webhook_events`` and ``webhook_attempts``.

The store records a request's events itself, in the transaction of the status change
(:meth:`OutboxRepository.record`, called by :class:`~imagegate.jobs.queue.JobRepository` on every
transition), so an event exists if and only if its status change does, whichever process made the
change. An event holds a snapshot of the job as it was at that change; the deliverer
(``imagegate.webhooks.deliverer``) renders the body from it with the protocol's views when it
sends, so the store needs no URL and no settings of the API.

Rules the SQL keeps, on SQLite and PostgreSQL alike:

- Event ids (the ``webhook-id`` header) sort in the order the job's transitions happened; each
  new id of a job is made greater than the job's previous one, whatever the clocks say.
- An event is claimable only when no earlier event of the same job is still pending: the events
  of one request arrive in order.
- A claim is one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; ``BEGIN IMMEDIATE`` on
  SQLite) that sets a lease (``lease_expires_at``). The lease value is the claim's fencing token:
  a deliverer that outlived its lease cannot overwrite the outcome of the one that took over, and
  a deliverer killed mid-delivery leaves a pending event that is claimed again once the lease
  expires.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.paging import Page, SortKey, fetch_page
from imagegate.jobs.status import JobStatus
from imagegate.jobs.wakeups import Topic, Wakeups

if TYPE_CHECKING:
    from imagegate.jobs.queue import Job

# Event types. The terminal ones are the lower-cased final status.
QUEUED = "queued"
START = "start"
PROGRESS = "progress"
TERMINAL_TYPES = {s.value.lower(): s for s in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.CANCELED)}

# Event states.
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"  # every attempt failed until the event's window closed (or it cannot be sent)
DROPPED = "dropped"  # not sent on purpose: the receiver answered 410, or a newer event superseded it
EVENT_STATES = (PENDING, DELIVERED, FAILED, DROPPED)

# Progress updates of one job are sent at most this often; updates in between are folded into
# the one that is waiting.
PROGRESS_THROTTLE_SECONDS = 0.5
# Intermediate events (queued, start, progress) are best-effort: a short window.
INTERMEDIATE_WINDOW_SECONDS = 60.0

# What each body-level `webhook_events_filter` value asks for.
FILTER_EVENTS: dict[str, frozenset[str]] = {
    "*": frozenset({START, PROGRESS, *TERMINAL_TYPES}),
    "start": frozenset({START}),
    "completed": frozenset(TERMINAL_TYPES),
    "complete": frozenset(TERMINAL_TYPES),
    "failed": frozenset({"failed", "error"}),
    # The hosted protocol's "output" fires when the output exists, "logs" while the model runs.
    "output": frozenset({"completed"}),
    "logs": frozenset({PROGRESS}),
}

GONE_MESSAGE = "the receiver answered 410 Gone: no further deliveries for this request"

_events = schema.webhook_events
_attempts = schema.webhook_attempts
# Event ids sort in the order they were recorded.
_EVENTS_NEWEST_FIRST = [SortKey("id", _events.c.id, True, str)]


@dataclass
class WebhookEvent:
    id: str
    job_id: str
    key_id: str
    target_url: str
    event_type: str
    terminal: bool
    payload: str | None  # the rendered body: events recorded before snapshots were kept
    job_snapshot: dict[str, Any] | None  # the job at the transition; the body is rendered from it
    state: str
    attempts: int
    next_attempt_at: float
    deliver_until: float
    lease_expires_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> "WebhookEvent":
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})


@dataclass
class WebhookAttempt:
    id: int
    event_id: str
    event_type: str
    job_id: str
    attempted_at: float
    status_code: int | None
    error: str | None
    duration_ms: float


@dataclass
class AttemptResult:
    """What one delivery attempt did, and what the event becomes because of it."""

    attempted_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    state: str  # the event's new state
    next_attempt_at: float
    stop_request: bool = False  # 410: drop every other pending event of the request too


def event_type_for(job: "Job", previous: JobStatus | None) -> str | None:
    if job.status.terminal:
        return job.status.value.lower()
    if job.status is JobStatus.QUEUED and previous is None:
        return QUEUED
    if job.status is JobStatus.PROCESSING and previous is JobStatus.QUEUED:
        return START
    if job.status is JobStatus.PROCESSING and previous is JobStatus.PROCESSING:
        return PROGRESS
    return None


def wanted(job: "Job", event_type: str) -> bool:
    """Whether the job's webhook mode asks for this event type."""
    mode = job.webhook_mode
    if event_type == START and job.attempts > 1:
        # A job re-claimed after its worker vanished does not "start" a second time.
        return False
    if mode in ("terminal", "batch"):
        return event_type in TERMINAL_TYPES
    if mode == "sync":
        return True
    if mode == "events":
        asked = job.webhook_events or ["*"]
        return any(event_type in FILTER_EVENTS.get(str(name), frozenset()) for name in asked)
    return False


def _id_time(event_id: str | None) -> int:
    if not event_id or not event_id.startswith("msg_"):
        return 0
    try:
        return int(event_id[4:20], 16)
    except ValueError:
        return 0


def new_event_id(previous_id: str | None) -> str:
    # Fixed-width hex nanoseconds first, so ids sort by time; never behind the job's previous
    # event, so a clock step between two processes cannot reorder a job's events.
    stamp = max(time.time_ns(), _id_time(previous_id) + 1)
    return f"msg_{stamp:016x}{os.urandom(8).hex()}"


class OutboxRepository:
    def __init__(self, db: Database, wakeups: Wakeups, *, retry_seconds: float = 25 * 3600.0) -> None:
        self.db = db
        self.wakeups = wakeups
        # How long a final-status event is retried (webhook_retry_hours).
        self.retry_seconds = retry_seconds

    @property
    def postgres(self) -> bool:
        return self.db.postgres

    def _read(self) -> Any:
        return self.db.read()

    # -- recording (inside the job's transaction) -------------------------------------------

    def record(self, conn: Connection, job: "Job", previous: JobStatus | None) -> None:
        """Write the event this transition means for the job's webhook, if it asks for one."""
        if not job.webhook_url or not job.webhook_mode:
            return
        event_type = event_type_for(job, previous)
        if event_type is None or not wanted(job, event_type):
            return
        e = _events
        now = time.time()
        snapshot = job.snapshot()
        latest = conn.execute(select(e).where(e.c.job_id == job.id).order_by(e.c.id.desc()).limit(1)).first()
        due = now
        created = now
        if event_type == PROGRESS:
            if (
                latest is not None
                and latest.event_type == PROGRESS
                and latest.state == PENDING
                and latest.attempts == 0
                and latest.lease_expires_at is None
            ):
                # A progress update is still waiting for its turn: send the newest numbers with it.
                folded = conn.execute(
                    update(e)
                    .where(e.c.id == latest.id, e.c.state == PENDING, e.c.attempts == 0, e.c.lease_expires_at.is_(None))
                    .values(job_snapshot=snapshot)
                ).rowcount
                if folded:
                    return
            last_query = (
                select(e.c.created_at, e.c.next_attempt_at, e.c.state)
                .where(e.c.job_id == job.id, e.c.event_type == PROGRESS)
                .order_by(e.c.id.desc())
                .limit(1)
            )
            if self.postgres:
                # Serialises with finish_attempt on that row: either its outcome is seen here, or
                # the new event is committed before it pushes the job's later progress.
                last_query = last_query.with_for_update()
            last = conn.execute(last_query).first()
            if last is not None:
                # A progress event's created_at is the moment it was due, and a finished one's
                # next_attempt_at is when its last attempt ended: spacing holds between what is sent,
                # not only between what is recorded. (One still in flight pushes its successor
                # when it finishes, in finish_attempt.)
                sent = last.next_attempt_at if last.state != PENDING else last.created_at
                due = created = max(now, last.created_at + PROGRESS_THROTTLE_SECONDS, sent + PROGRESS_THROTTLE_SECONDS)
        terminal = event_type in TERMINAL_TYPES
        if terminal:
            # Progress still waiting when the job ends is stale: the final status supersedes it
            # and need not wait behind it.
            conn.execute(
                update(e)
                .where(
                    e.c.job_id == job.id,
                    e.c.event_type == PROGRESS,
                    e.c.state == PENDING,
                    e.c.attempts == 0,
                    e.c.lease_expires_at.is_(None),
                )
                .values(state=DROPPED, last_error="superseded by the final status before it was sent")
            )
        gone = conn.execute(
            select(e.c.id).where(e.c.job_id == job.id, e.c.state == DROPPED, e.c.last_status_code == 410).limit(1)
        ).first()
        window = self.retry_seconds if terminal else INTERMEDIATE_WINDOW_SECONDS
        conn.execute(
            e.insert().values(
                id=new_event_id(latest.id if latest is not None else None),
                job_id=job.id,
                key_id=job.key_id,
                target_url=job.webhook_url,
                event_type=event_type,
                terminal=terminal,
                payload=None,
                job_snapshot=snapshot,
                state=DROPPED if gone else PENDING,
                attempts=0,
                next_attempt_at=due,
                deliver_until=due + window,
                lease_expires_at=None,
                last_status_code=None,
                last_error=GONE_MESSAGE if gone else None,
                created_at=created,
                delivered_at=None,
            )
        )
        if not gone:
            self.wakeups.publish(conn, Topic.WEBHOOK)

    # -- the deliverer's side -----------------------------------------------------------------

    def _due_ids(self, now: float, limit: int, *, lock: bool) -> sa.Select[Any]:
        cand = _events.alias("cand")
        earlier = _events.alias("earlier")
        blocked = (
            select(earlier.c.id)
            .where(earlier.c.job_id == cand.c.job_id, earlier.c.state == PENDING, earlier.c.id < cand.c.id)
            .exists()
        )
        pick = (
            select(cand.c.id)
            .where(
                cand.c.state == PENDING,
                cand.c.next_attempt_at <= now,
                or_(cand.c.lease_expires_at.is_(None), cand.c.lease_expires_at < now),
                ~blocked,
            )
            .order_by(cand.c.next_attempt_at)
            .limit(limit)
        )
        if lock and self.postgres:
            pick = pick.with_for_update(skip_locked=True, of=cand)
        return pick

    def next_due_at(self) -> float | None:
        """When the next pending event may be sent (its retry time, or when the lease of one in
        flight runs out); None when nothing is pending. One read: the idle deliverer's clock."""
        e = _events
        due = sa.case((e.c.lease_expires_at > e.c.next_attempt_at, e.c.lease_expires_at), else_=e.c.next_attempt_at)
        with self._read() as conn:
            value = conn.execute(select(sa.func.min(due)).where(e.c.state == PENDING)).scalar()
        return None if value is None else float(value)

    def has_due(self, now: float | None = None) -> bool:
        """A cheap read first, so an idle poll never takes SQLite's write lock."""
        with self._read() as conn:
            return conn.execute(self._due_ids(time.time() if now is None else now, 1, lock=False)).first() is not None

    def claim_due(self, limit: int, lease_seconds: float, now: float | None = None) -> list[WebhookEvent]:
        """Lease up to ``limit`` due events (the head pending event of each request) in one statement."""
        if limit <= 0:
            return []
        e = _events
        now = time.time() if now is None else now
        lease = now + lease_seconds
        stmt = (
            update(e)
            .where(
                e.c.id.in_(self._due_ids(now, limit, lock=True)),
                e.c.state == PENDING,
                or_(e.c.lease_expires_at.is_(None), e.c.lease_expires_at < now),
            )
            .values(lease_expires_at=lease, attempts=e.c.attempts + 1)
            .returning(*e.c)
        )
        with self.db.transaction() as conn:
            rows = conn.execute(stmt).all()
        return sorted((WebhookEvent.from_row(r) for r in rows), key=lambda ev: ev.next_attempt_at)

    def has_newer_event(self, event: WebhookEvent) -> bool:
        e = _events
        with self._read() as conn:
            return (
                conn.execute(select(e.c.id).where(e.c.job_id == event.job_id, e.c.id > event.id).limit(1)).first()
                is not None
            )

    def finish_attempt(self, event: WebhookEvent, result: AttemptResult) -> bool:
        """Record the attempt and the event's new state. False when the lease was lost meanwhile
        (the attempt is recorded all the same: it happened)."""
        e = _events
        ended = result.attempted_at + result.duration_ms / 1000.0
        values: dict[str, Any] = dict(
            state=result.state,
            # A finished event keeps the end of its last attempt here (the progress throttle
            # measures from it).
            next_attempt_at=result.next_attempt_at if result.state == PENDING else ended,
            lease_expires_at=None,
            last_status_code=result.status_code,
            last_error=result.error,
        )
        if result.state == DELIVERED:
            values["delivered_at"] = ended
        with self.db.transaction() as conn:
            conn.execute(
                _attempts.insert().values(
                    event_id=event.id,
                    job_id=event.job_id,
                    attempted_at=result.attempted_at,
                    status_code=result.status_code,
                    error=result.error,
                    duration_ms=result.duration_ms,
                )
            )
            owned = conn.execute(
                update(e)
                .where(e.c.id == event.id, e.c.state == PENDING, e.c.lease_expires_at == event.lease_expires_at)
                .values(**values)
            ).rowcount
            if owned and event.event_type == PROGRESS:
                # The job's next progress update waits a full throttle interval after this one
                # was answered, however late this one went out.
                spaced = ended + PROGRESS_THROTTLE_SECONDS
                conn.execute(
                    update(e)
                    .where(
                        e.c.job_id == event.job_id,
                        e.c.event_type == PROGRESS,
                        e.c.state == PENDING,
                        e.c.id > event.id,
                        e.c.next_attempt_at < spaced,
                    )
                    .values(next_attempt_at=spaced)
                )
            if owned and result.stop_request:
                conn.execute(
                    update(e)
                    .where(e.c.job_id == event.job_id, e.c.state == PENDING, e.c.id != event.id)
                    .values(state=DROPPED, lease_expires_at=None, last_error=GONE_MESSAGE)
                )
        return bool(owned)

    # -- the API's side -----------------------------------------------------------------------

    def events_for_job(self, job_id: str) -> list[WebhookEvent]:
        e = _events
        with self._read() as conn:
            rows = conn.execute(select(e).where(e.c.job_id == job_id).order_by(e.c.id)).all()
        return [WebhookEvent.from_row(r) for r in rows]

    def attempts_for_job(self, job_id: str) -> list[WebhookAttempt]:
        a, e = _attempts, _events
        query = (
            select(a, e.c.event_type)
            .select_from(a.join(e, e.c.id == a.c.event_id, isouter=True))
            .where(a.c.job_id == job_id)
            .order_by(a.c.attempted_at, a.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            WebhookAttempt(
                id=r.id,
                event_id=r.event_id,
                event_type=r.event_type or "",
                job_id=r.job_id,
                attempted_at=r.attempted_at,
                status_code=r.status_code,
                error=r.error,
                duration_ms=r.duration_ms,
            )
            for r in rows
        ]

    def page(
        self, *, state: str | None = None, job_id: str | None = None, limit: int, cursor: str | None = None
    ) -> Page[WebhookEvent]:
        """Events (deliveries) of every request, newest first."""
        e = _events
        query = select(e)
        if state is not None:
            query = query.where(e.c.state == state)
        if job_id is not None:
            query = query.where(e.c.job_id == job_id)
        with self._read() as conn:
            return fetch_page(conn, query, _EVENTS_NEWEST_FIRST, cursor=cursor, limit=limit, convert=WebhookEvent.from_row)

    def redeliver(self, job_id: str, now: float | None = None, conn: Connection | None = None) -> WebhookEvent | None:
        """Queue the request's terminal event again (same webhook-id); None if it has none.

        A fresh retry window starts, and a delivery in flight is fenced out (its lease cleared),
        so the resend is not swallowed by an older attempt's outcome.
        """
        e = _events
        now = time.time() if now is None else now
        with self.db.transaction(conn) as conn:
            row = conn.execute(
                select(e).where(e.c.job_id == job_id, e.c.terminal.is_(True)).order_by(e.c.id.desc()).limit(1)
            ).first()
            if row is None:
                return None
            conn.execute(
                update(e)
                .where(e.c.id == row.id)
                .values(
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    deliver_until=now + self.retry_seconds,
                    lease_expires_at=None,
                    delivered_at=None,
                )
            )
            row = conn.execute(select(e).where(e.c.id == row.id)).one()
        return WebhookEvent.from_row(row)

    def purge_expired(self, retention_days: float, now: float | None = None) -> int:
        """Delete the finished events whose last attempt ended more than ``retention_days`` ago,
        with their attempts (0 keeps them); returns how many events went."""
        if retention_days <= 0:
            return 0
        before = (time.time() if now is None else now) - retention_days * 86400.0
        purged = 0
        while (batch := self._purge_finished(before)) > 0:
            purged += batch
        return purged

    def _purge_finished(self, before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished events whose last attempt ended before ``before``, with
        their attempts; returns how many events went. Pending events are never touched."""
        e, a = _events, _attempts
        with self.db.transaction() as conn:
            ids = [
                row.id
                for row in conn.execute(
                    select(e.c.id).where(e.c.state != PENDING, e.c.next_attempt_at < before).limit(limit)
                )
            ]
            if not ids:
                return 0
            conn.execute(delete(a).where(a.c.event_id.in_(ids)))
            return int(conn.execute(delete(e).where(e.c.id.in_(ids), e.c.state != PENDING)).rowcount)

    def pending_count(self) -> int:
        e = _events
        with self._read() as conn:
            return int(conn.execute(select(sa.func.count()).select_from(e).where(e.c.state == PENDING)).scalar_one())


