"""Jobs: submit, claim, finish, cancel, recover.

Invariants, on SQLite and PostgreSQL alike:

- Money is held at submit, in the transaction that inserts the job (so concurrent submits cannot
  overdraw), captured when the job ends COMPLETED or FAILED, released when it ends ERROR or
  CANCELED.
- A job is claimed in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
  writers with ``BEGIN IMMEDIATE``) and belongs to the claiming worker (``lease_owner``) for as
  long as that worker's registry row heartbeats; the stalled-worker sweep frees the jobs of a
  worker whose heartbeat expired. Only the owner can finish a job, so a job taken over by another
  worker cannot be finished twice.
- Every status change records its webhook event (:class:`~imagegate.jobs.outbox.OutboxRepository`)
  in its own transaction: an event exists if and only if its change does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from imagegate.exceptions import IdempotencyConflictError, RequestNotFoundError
from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.ids import new_request_id, unstorable
from imagegate.jobs.keys import KeyRepository, RateLimit
from imagegate.jobs.outbox import OutboxRepository
from imagegate.jobs.paging import Page, SortKey, TimeRange, fetch_page
from imagegate.jobs.status import JobStatus
from imagegate.jobs.wakeups import Topic, Wakeups

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
CANCELED_MESSAGE = "Canceled by the client"

_jobs = schema.jobs
_JOB_BY_ID = select(_jobs).where(_jobs.c.id == sa.bindparam("job_id"))
_OWN_JOB_BY_ID = _JOB_BY_ID.where(_jobs.c.key_id == sa.bindparam("key_id"))
_JOBS_NEWEST_FIRST = [SortKey("created_at", _jobs.c.created_at, True, float), SortKey("id", _jobs.c.id, True, str)]
# A listing's columns: a job's parameters can hold whole images.
_SUMMARY_COLUMNS = [column for column in _jobs.c if column.name != "params"]
_ANY_QUEUED = select(_jobs.c.id).where(_jobs.c.status == JobStatus.QUEUED.value).limit(1)
_QUEUED_AHEAD = select(func.count()).where(
    _jobs.c.status == JobStatus.QUEUED.value,
    _jobs.c.model_id == sa.bindparam("model_id"),
    sa.or_(
        _jobs.c.created_at < sa.bindparam("created_at"),
        and_(_jobs.c.created_at == sa.bindparam("created_at"), _jobs.c.id < sa.bindparam("job_id")),
    ),
)
_ANY_QUEUED_FOR = (
    select(_jobs.c.id)
    .where(_jobs.c.status == JobStatus.QUEUED.value, _jobs.c.model_id.in_(sa.bindparam("model_ids", expanding=True)))
    .limit(1)
)


@dataclass
class Job:
    id: str
    key_id: str
    model_id: str
    protocol: str
    status: JobStatus
    params: dict[str, Any]
    price_micros: int
    attempts: int
    max_attempts: int
    lease_owner: str | None  # the worker running it (its registry row's id)
    cancel_requested: bool
    progress: float
    progress_detail: dict[str, Any] | None
    error: str | None
    output: dict[str, Any] | None
    webhook_url: str | None
    webhook_mode: str | None
    webhook_events: list[str] | None
    idempotency_key: str | None
    request_hash: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    completed_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        data = dict(row._mapping)
        data["status"] = JobStatus(data["status"])
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def snapshot(self) -> dict[str, Any]:
        """The job as JSON, without its request parameters (they can hold whole images)."""
        data = asdict(self)
        data["status"] = self.status.value
        data["params"] = {}
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> "Job":
        values = {f.name: data.get(f.name) for f in fields(cls)}
        values["status"] = JobStatus(values["status"])
        values["params"] = values["params"] or {}
        return cls(**values)


@dataclass
class QueuedModel:
    """The queue of one model: how many jobs wait, and since when the oldest."""

    model_id: str
    depth: int
    oldest_created_at: float


@dataclass(frozen=True)
class JobFilter:
    key_id: str | None = None
    model_id: str | None = None
    statuses: tuple[JobStatus, ...] = ()
    period: TimeRange = TimeRange()  # of created_at


@dataclass
class NewJob:
    key_id: str
    model_id: str
    protocol: str
    params: dict[str, Any]
    price_micros: int
    max_attempts: int
    webhook_url: str | None = None
    webhook_mode: str | None = None
    webhook_events: list[str] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    # The model id clients see in request ids, when the seed names it differently from the catalog.
    public_model_id: str | None = None


def _not_found_if_unstorable(job_id: str) -> None:
    """An id no job can have (a NUL, which PostgreSQL text refuses, or a lone surrogate, which no
    driver can encode) is simply not found, rather than an error from the database."""
    if unstorable(job_id):
        shown = job_id.encode("utf-8", "backslashreplace").decode("utf-8")
        raise RequestNotFoundError(f"Request '{shown}' not found")


class JobRepository:
    def __init__(self, db: Database, keys: KeyRepository, outbox: OutboxRepository, wakeups: Wakeups) -> None:
        self.db = db
        self.keys = keys
        self.outbox = outbox
        self.wakeups = wakeups

    def _changed(self, conn: Connection, job: Job, previous: JobStatus | None, *, record: bool = True) -> None:
        """Everything a change of a job brings with it, in its transaction: its webhook event and
        the wake-ups of whoever waits for it (a worker for a queued job, a request for any)."""
        if record:
            self.outbox.record(conn, job, previous)
        if job.status is JobStatus.QUEUED:
            self.wakeups.publish(conn, Topic.QUEUED, job.model_id)
        self.wakeups.publish(conn, Topic.CHANGED, job.id)

    # -- submit and read --------------------------------------------------------------------------

    def submit(self, new: NewJob, conn: Connection | None = None, *, rate_limit: RateLimit | None = None) -> tuple[Job, bool]:
        """Take a token of the key's rate limit, hold the price and insert the job, in one
        transaction. Returns (job, created).

        With an idempotency key already used by this API key within 24 h, the original job is
        returned (created=False) when the body matches; a different body raises a conflict.
        """
        if conn is not None:
            return self._submit_once(new, conn, rate_limit)
        for _ in range(3):
            try:
                with self.db.transaction() as own:
                    return self._submit_once(new, own, rate_limit)
            except IntegrityError:
                # A concurrent submit with the same Idempotency-Key won the unique index; the
                # next round finds its job.
                continue
        raise IdempotencyConflictError("Idempotency-Key is being used by a concurrent request")

    def _submit_once(self, new: NewJob, conn: Connection, rate_limit: RateLimit | None) -> tuple[Job, bool]:
        now = time.time()
        t = _jobs
        if rate_limit is not None:
            self.keys.take_token(conn, new.key_id, rate_limit, now)
        if new.idempotency_key:
            row = conn.execute(select(t).where(t.c.key_id == new.key_id, t.c.idempotency_key == new.idempotency_key)).first()
            if row is not None:
                existing = Job.from_row(row)
                if existing.created_at >= now - IDEMPOTENCY_WINDOW_SECONDS:
                    if existing.request_hash != new.request_hash:
                        raise IdempotencyConflictError("Idempotency-Key was already used with a different request body")
                    return existing, False
                # Outside the window the key is free again.
                conn.execute(update(t).where(t.c.id == existing.id).values(idempotency_key=None))
        job_id = new_request_id(new.public_model_id or new.model_id)
        self.keys.hold(conn, new.key_id, new.price_micros, job_id, now)
        conn.execute(
            t.insert().values(
                id=job_id,
                key_id=new.key_id,
                model_id=new.model_id,
                protocol=new.protocol,
                status=JobStatus.QUEUED.value,
                params=new.params,
                price_micros=new.price_micros,
                attempts=0,
                max_attempts=new.max_attempts,
                cancel_requested=False,
                progress=0.0,
                webhook_url=new.webhook_url,
                webhook_mode=new.webhook_mode,
                webhook_events=new.webhook_events,
                idempotency_key=new.idempotency_key,
                request_hash=new.request_hash,
                created_at=now,
                updated_at=now,
            )
        )
        job = Job.from_row(conn.execute(select(t).where(t.c.id == job_id)).one())
        self._changed(conn, job, None)
        return job, True

    def get(self, job_id: str, key_id: str | None = None, conn: Connection | None = None) -> Job:
        _not_found_if_unstorable(job_id)
        if key_id is None:
            statement, params = _JOB_BY_ID, {"job_id": job_id}
        else:
            statement, params = _OWN_JOB_BY_ID, {"job_id": job_id, "key_id": key_id}
        row = self.db.read_first(statement, params) if conn is None else conn.execute(statement, params).first()
        if row is None:
            raise RequestNotFoundError(f"Request '{job_id}' not found")
        return Job.from_row(row)

    def page(self, where: JobFilter, *, limit: int, cursor: str | None = None, with_params: bool = True) -> Page[Job]:
        """Jobs matching ``where``, newest first; without their parameters unless ``with_params``."""
        t = _jobs
        columns = list(t.c) if with_params else _SUMMARY_COLUMNS
        query = select(*columns).where(*where.period.clauses(t.c.created_at))
        if where.key_id is not None:
            query = query.where(t.c.key_id == where.key_id)
        if where.model_id is not None:
            query = query.where(t.c.model_id == where.model_id)
        if where.statuses:
            query = query.where(t.c.status.in_([s.value for s in where.statuses]))
        convert = Job.from_row if with_params else (lambda row: Job.from_snapshot(dict(row._mapping)))
        with self.db.read() as conn:
            return fetch_page(conn, query, _JOBS_NEWEST_FIRST, cursor=cursor, limit=limit, convert=convert)

    def list(self, *, key_id: str | None = None, statuses: Iterable[JobStatus] | None = None) -> list[Job]:
        t = _jobs
        query = select(t).order_by(t.c.created_at)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        if statuses is not None:
            query = query.where(t.c.status.in_([s.value for s in statuses]))
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query).all()]

    # -- the worker's side ------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        model_ids: Iterable[str] | None = None,
        *,
        loaded: Iterable[str] = (),
        affinity_max_age: float = 0.0,
    ) -> Job | None:
        """Claim one queued job in one statement, or return None.

        Jobs of the models in ``loaded`` (the worker has their weights in memory) come first, so a
        mixed fleet does not swap weights for every job; that preference is bounded: a job that has
        waited ``affinity_max_age`` seconds goes first whichever worker asks (if it serves the
        model). Otherwise oldest first.
        """
        t = _jobs
        now = time.time()
        pick = select(t.c.id).where(t.c.status == JobStatus.QUEUED.value)
        if model_ids is not None:
            pick = pick.where(t.c.model_id.in_(list(model_ids)))
        warm = list(loaded)
        if warm and affinity_max_age > 0:
            rank = sa.case(
                (t.c.created_at <= now - affinity_max_age, 0),
                (t.c.model_id.in_(warm), 1),
                else_=2,
            )
            pick = pick.order_by(rank, t.c.created_at)
        else:
            pick = pick.order_by(t.c.created_at)
        pick = pick.limit(1)
        if self.db.postgres:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(t)
            .where(t.c.id == pick.scalar_subquery(), t.c.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.PROCESSING.value,
                lease_owner=worker_id,
                attempts=t.c.attempts + 1,
                progress=0.0,
                progress_detail=None,
                started_at=func.coalesce(t.c.started_at, now),
                updated_at=now,
            )
            .returning(*t.c)
        )
        with self.db.transaction() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            job = Job.from_row(row)
            self._changed(conn, job, JobStatus.QUEUED)
        return job

    def has_queued(self, model_ids: Iterable[str] | None = None) -> bool:
        """The idle worker's cheap check before it tries a claim (a write) in earnest."""
        if model_ids is None:
            return self.db.read_first(_ANY_QUEUED, {}) is not None
        return self.db.read_first(_ANY_QUEUED_FOR, {"model_ids": list(model_ids)}) is not None

    def queued_by_model(self) -> list[QueuedModel]:
        """Queue depth and oldest queued job per model; the claim index finds the queued rows."""
        t = _jobs
        query = (
            select(t.c.model_id, func.count().label("depth"), func.min(t.c.created_at).label("oldest"))
            .where(t.c.status == JobStatus.QUEUED.value)
            .group_by(t.c.model_id)
        )
        with self.db.read() as conn:
            return [QueuedModel(row.model_id, int(row.depth), float(row.oldest)) for row in conn.execute(query).all()]

    def progress(self, job_id: str, worker_id: str, progress: float, detail: dict[str, Any] | None = None) -> bool | None:
        """Record a running job's progress. Returns whether a cancel was requested, or None when
        this worker no longer holds the job."""
        t = _jobs
        with self.db.transaction() as conn:
            row = conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value)
                .values(progress=progress, progress_detail=detail, updated_at=time.time())
                .returning(*t.c)
            ).first()
            if row is None:
                return None
            job = Job.from_row(row)
            self._changed(conn, job, JobStatus.PROCESSING)
        return job.cancel_requested

    def holds(self, job_id: str, worker_id: str, conn: Connection | None = None) -> bool | None:
        """Whether a cancel was requested for the job this worker runs; None when it no longer
        holds it (another worker took it over)."""
        t = _jobs
        with self.db.read(conn) as conn:
            row = conn.execute(
                select(t.c.cancel_requested).where(
                    t.c.id == job_id, t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value
                )
            ).first()
        return None if row is None else bool(row.cancel_requested)

    def finish(
        self,
        job_id: str,
        worker_id: str | None,
        status: JobStatus,
        *,
        output: dict[str, Any] | None = None,
        error: str | None = None,
        charge_micros: int | None = None,
    ) -> Job | None:
        """End a job and settle its hold. Returns None when this worker no longer holds the job.

        A job whose cancel was acknowledged (``cancel_requested``) ends CANCELED, not charged,
        whatever the worker reports: the cancel and this update serialise on the job's row, so a
        cancel is either seen here or answered with the final status (see :meth:`cancel`).

        ``charge_micros`` (≤ the held price) settles a price that depended on the result; the
        difference is released in the same transaction.
        """
        assert status.terminal
        t = _jobs
        now = time.time()
        with self.db.transaction() as conn:
            cond = [t.c.id == job_id]
            if worker_id is None:
                cond.append(t.c.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]))
            else:
                cond += [t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value]
            current = select(t).where(and_(*cond))
            if self.db.postgres:
                # Serialises with a concurrent cancel on the row: either its flag is seen here,
                # or the cancel runs after this commit and answers the final status.
                current = current.with_for_update()
            row = conn.execute(current).first()
            if row is None:
                return None
            if row.cancel_requested:
                status, output, error = JobStatus.CANCELED, None, CANCELED_MESSAGE
            row = conn.execute(
                update(t)
                .where(t.c.id == job_id)
                .values(
                    status=status.value,
                    output=output,
                    error=error,
                    progress=1.0 if status is JobStatus.COMPLETED else t.c.progress,
                    lease_owner=None,
                    updated_at=now,
                    completed_at=now,
                )
                .returning(*t.c)
            ).one()
            job = Job.from_row(row)
            if charge_micros is not None and job.status.charged and 0 <= charge_micros < job.price_micros:
                self.keys.release(conn, job.key_id, job.price_micros - charge_micros, job.id, now)
                row = conn.execute(update(t).where(t.c.id == job_id).values(price_micros=charge_micros).returning(*t.c)).one()
                job = Job.from_row(row)
            self._settle(conn, job, now)
            self._changed(conn, job, JobStatus.PROCESSING)
        return job

    def _settle(self, conn: Connection, job: Job, now: float) -> None:
        if job.price_micros <= 0:
            return
        if job.status.charged:
            self.keys.capture(conn, job.key_id, job.id, now)
        else:
            self.keys.release(conn, job.key_id, job.price_micros, job.id, now)

    def release(self, job_id: str, worker_id: str) -> bool:
        """Put a running job back in the queue (graceful shutdown past its grace period)."""
        t = _jobs
        with self.db.transaction() as conn:
            row = conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value)
                # Progress restarts with the next attempt; a queued job shows none.
                .values(status=JobStatus.QUEUED.value, lease_owner=None, progress=0.0, progress_detail=None, updated_at=time.time())
                .returning(*t.c)
            ).first()
            if row is None:
                return False
            self._changed(conn, Job.from_row(row), JobStatus.PROCESSING)
        return True

    def release_held(self, worker_id: str) -> list[Job]:
        """Put back in the queue every running job ``worker_id`` holds. For an idle worker back from
        a database outage: a claim may have committed while its answer was lost, leaving a job that
        the worker owns, heartbeats for, and does not run (the stalled sweep never frees it)."""
        t = _jobs
        with self.db.transaction() as conn:
            rows = conn.execute(
                update(t)
                .where(t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value)
                .values(status=JobStatus.QUEUED.value, lease_owner=None, progress=0.0, progress_detail=None, updated_at=time.time())
                .returning(*t.c)
            ).all()
            jobs = [Job.from_row(r) for r in rows]
            for job in jobs:
                self._changed(conn, job, JobStatus.PROCESSING)
        return jobs

    def cancel(self, job_id: str, key_id: str | None, conn: Connection | None = None) -> Job:
        """Cancel a job of ``key_id`` (any key's, with None: the operator).

        A queued job ends CANCELED now. A running one is flagged (its worker stops at its next
        step) and is then never charged: :meth:`finish` ends a flagged job CANCELED whatever its
        outcome. A job that has already ended is returned as it is: its final status is the answer.
        """
        _not_found_if_unstorable(job_id)
        t = _jobs
        now = time.time()
        own = t.c.id == job_id if key_id is None else and_(t.c.id == job_id, t.c.key_id == key_id)
        with self.db.transaction(conn) as conn:
            row = conn.execute(
                update(t)
                .where(own, t.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELED.value, error=CANCELED_MESSAGE, updated_at=now, completed_at=now)
                .returning(*t.c)
            ).first()
            if row is not None:
                job = Job.from_row(row)
                self._settle(conn, job, now)
                self._changed(conn, job, JobStatus.QUEUED)
                return job
            row = conn.execute(
                update(t)
                .where(own, t.c.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=now)
                .returning(*t.c)
            ).first()
            if row is not None:
                job = Job.from_row(row)
                self.wakeups.publish(conn, Topic.CANCEL, job.id)
                self._changed(conn, job, JobStatus.PROCESSING, record=False)
                return job
            row = conn.execute(select(t).where(own)).first()
        if row is None:
            raise RequestNotFoundError(f"Request '{job_id}' not found")
        return Job.from_row(row)

    def recover_stalled(self, lease_seconds: float, now: float | None = None) -> list[Job]:
        """The stalled-worker sweep: free the jobs of workers whose heartbeat is older than
        ``lease_seconds`` (or that left no registry row at all), and forget those workers.

        A freed job is queued again; one that has used up its attempts ends ERROR, and one whose
        cancel was asked for ends CANCELED — neither is charged. A read comes first, so a sweep that
        finds nothing never takes a write lock.
        """
        t, w = _jobs, schema.workers
        now = time.time() if now is None else now
        horizon = now - lease_seconds
        live = select(w.c.id).where(w.c.heartbeat_at >= horizon)
        orphaned = select(t).where(t.c.status == JobStatus.PROCESSING.value, t.c.lease_owner.not_in(live))
        stale = select(w.c.id).where(w.c.heartbeat_at < horizon)
        with self.db.read() as conn:
            if conn.execute(orphaned.limit(1)).first() is None and conn.execute(stale.limit(1)).first() is None:
                return []
        changed: list[Job] = []
        with self.db.transaction() as conn:
            if self.db.postgres:
                orphaned = orphaned.with_for_update(skip_locked=True)
            for row in conn.execute(orphaned).all():
                job = Job.from_row(row)
                if job.cancel_requested or job.attempts >= job.max_attempts:
                    final = JobStatus.CANCELED if job.cancel_requested else JobStatus.ERROR
                    error = (
                        CANCELED_MESSAGE
                        if job.cancel_requested
                        else f"The worker running this job stopped responding {job.attempts} time(s); giving up (not charged)"
                    )
                    values: dict[str, Any] = dict(status=final.value, error=error, completed_at=now)
                else:
                    values = dict(status=JobStatus.QUEUED.value, progress=0.0, progress_detail=None)
                new_row = conn.execute(
                    update(t)
                    .where(t.c.id == job.id, t.c.status == JobStatus.PROCESSING.value, t.c.lease_owner == job.lease_owner)
                    .values(lease_owner=None, updated_at=now, **values)
                    .returning(*t.c)
                ).first()
                if new_row is None:
                    continue
                done = Job.from_row(new_row)
                if done.status.terminal:
                    self._settle(conn, done, now)
                self._changed(conn, done, JobStatus.PROCESSING)
                changed.append(done)
            conn.execute(sa.delete(w).where(w.c.heartbeat_at < horizon))
        return changed

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs of the same model a worker would take before this one (FIFO per
        model); None when the job is not queued."""
        if job.status is not JobStatus.QUEUED:
            return None
        row = self.db.read_first(
            _QUEUED_AHEAD, {"model_id": job.model_id, "created_at": job.created_at, "job_id": job.id}
        )
        return int(row[0]) if row is not None else 0

    # -- media retention ----------------------------------------------------------------------------

    def with_expired_media(self, completed_before: float, limit: int = 200) -> list[tuple[str, list[str]]]:
        """``(job id, media keys)`` of completed jobs finished before ``completed_before`` whose
        media the retention sweep has not deleted yet, oldest first."""
        t = _jobs
        with self.db.read() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.output)
                .where(t.c.status == JobStatus.COMPLETED.value, t.c.completed_at < completed_before, t.c.media_deleted_at.is_(None))
                .order_by(t.c.completed_at)
                .limit(limit)
            ).all()
        return [(row.id, [item["key"] for item in (row.output or {}).get("media", [])]) for row in rows]

    def mark_media_deleted(self, job_ids: Iterable[str], now: float | None = None) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self.db.transaction() as conn:
            conn.execute(update(_jobs).where(_jobs.c.id.in_(ids)).values(media_deleted_at=time.time() if now is None else now))
