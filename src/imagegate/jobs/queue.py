"""Jobs: submit, claim, finish, cancel, recover.

Invariants, on SQLite and PostgreSQL alike:

- Money is held at submit, in the transaction that inserts the job (so concurrent submits cannot
  overdraw), captured when the job ends COMPLETED or FAILED, released when it ends ERROR or
  CANCELED.
- A job is claimed in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
  writers with ``BEGIN IMMEDIATE``). Only the worker that holds the lease can finish a job, so a
  job re-claimed after its lease expired cannot be finished twice.
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
from imagegate.jobs.keys import KeyRepository
from imagegate.jobs.outbox import OutboxRepository
from imagegate.jobs.status import JobStatus

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
CANCELED_MESSAGE = "Canceled by the client"

_jobs = schema.jobs
_JOB_BY_ID = select(_jobs).where(_jobs.c.id == sa.bindparam("job_id"))
_OWN_JOB_BY_ID = _JOB_BY_ID.where(_jobs.c.key_id == sa.bindparam("key_id"))
_SUMMARY_COLUMNS = [column for column in _jobs.c if column.name != "params"]
_ANY_QUEUED = select(_jobs.c.id).where(_jobs.c.status == JobStatus.QUEUED.value).limit(1)
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
    lease_owner: str | None
    lease_expires_at: float | None
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
    def __init__(self, db: Database, keys: KeyRepository, outbox: OutboxRepository) -> None:
        self.db = db
        self.keys = keys
        self.outbox = outbox

    def _changed(self, conn: Connection, job: Job, previous: JobStatus | None) -> None:
        """Everything a status change brings with it, in its transaction."""
        self.outbox.record(conn, job, previous)

    # -- submit and read --------------------------------------------------------------------------

    def submit(self, new: NewJob, conn: Connection | None = None) -> tuple[Job, bool]:
        """Hold the price and insert the job in one transaction. Returns (job, created).

        With an idempotency key already used by this API key within 24 h, the original job is
        returned (created=False) when the body matches; a different body raises a conflict.
        """
        if conn is not None:
            return self._submit_once(new, conn)
        for _ in range(3):
            try:
                with self.db.transaction() as own:
                    return self._submit_once(new, own)
            except IntegrityError:
                # A concurrent submit with the same Idempotency-Key won the unique index; the
                # next round finds its job.
                continue
        raise IdempotencyConflictError("Idempotency-Key is being used by a concurrent request")

    def _submit_once(self, new: NewJob, conn: Connection) -> tuple[Job, bool]:
        now = time.time()
        t = _jobs
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

    def get(self, job_id: str, key_id: str | None = None) -> Job:
        _not_found_if_unstorable(job_id)
        if key_id is None:
            row = self.db.read_first(_JOB_BY_ID, {"job_id": job_id})
        else:
            row = self.db.read_first(_OWN_JOB_BY_ID, {"job_id": job_id, "key_id": key_id})
        if row is None:
            raise RequestNotFoundError(f"Request '{job_id}' not found")
        return Job.from_row(row)

    def list(self, *, key_id: str | None = None, statuses: Iterable[JobStatus] | None = None) -> list[Job]:
        t = _jobs
        query = select(t).order_by(t.c.created_at)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        if statuses is not None:
            query = query.where(t.c.status.in_([s.value for s in statuses]))
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query).all()]

    def page(
        self,
        key_id: str,
        *,
        limit: int,
        before: tuple[float, str] | None = None,
        statuses: Iterable[JobStatus] | None = None,
    ) -> list[Job]:
        """One page of a key's jobs, newest first: ``limit`` of them created before ``before``
        (the ``(created_at, id)`` of the last job of the previous page). Their parameters are
        left out (they can hold whole images)."""
        t = _jobs
        query = (
            select(*_SUMMARY_COLUMNS)
            .where(t.c.key_id == key_id)
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            created_at, job_id = before
            query = query.where(sa.or_(t.c.created_at < created_at, and_(t.c.created_at == created_at, t.c.id < job_id)))
        if statuses is not None:
            query = query.where(t.c.status.in_([s.value for s in statuses]))
        with self.db.read() as conn:
            return [Job.from_snapshot(dict(row._mapping)) for row in conn.execute(query).all()]

    # -- the worker's side ------------------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float, model_ids: Iterable[str] | None = None) -> Job | None:
        """Claim the oldest queued job in one statement, or return None."""
        t = _jobs
        now = time.time()
        pick = select(t.c.id).where(t.c.status == JobStatus.QUEUED.value)
        if model_ids is not None:
            pick = pick.where(t.c.model_id.in_(list(model_ids)))
        pick = pick.order_by(t.c.created_at).limit(1)
        if self.db.postgres:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(t)
            .where(t.c.id == pick.scalar_subquery(), t.c.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.PROCESSING.value,
                lease_owner=worker_id,
                lease_expires_at=now + lease_seconds,
                attempts=t.c.attempts + 1,
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

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        progress: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bool | None:
        """Renew the lease (and record progress). Returns whether a cancel was requested, or None
        if the lease is lost."""
        t = _jobs
        now = time.time()
        values: dict[str, Any] = {"lease_expires_at": now + lease_seconds}
        if progress is not None:
            values.update(progress=progress, progress_detail=detail, updated_at=now)
        with self.db.transaction() as conn:
            row = conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value)
                .values(**values)
                .returning(*t.c)
            ).first()
            if row is None:
                return None
            job = Job.from_row(row)
            if progress is not None:
                self._changed(conn, job, JobStatus.PROCESSING)
        return job.cancel_requested

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
            row = conn.execute(
                update(t)
                .where(and_(*cond))
                .values(
                    status=status.value,
                    output=output,
                    error=error,
                    progress=1.0 if status is JobStatus.COMPLETED else t.c.progress,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    completed_at=now,
                )
                .returning(*t.c)
            ).first()
            if row is None:
                return None
            job = Job.from_row(row)
            if charge_micros is not None and status.charged and 0 <= charge_micros < job.price_micros:
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
            return bool(
                conn.execute(
                    update(t)
                    .where(t.c.id == job_id, t.c.lease_owner == worker_id, t.c.status == JobStatus.PROCESSING.value)
                    # Progress restarts with the next attempt; a queued job shows none.
                    .values(status=JobStatus.QUEUED.value, lease_owner=None, lease_expires_at=None, progress=0.0, updated_at=time.time())
                ).rowcount
            )

    def cancel(self, job_id: str, key_id: str) -> Job:
        """A queued job ends CANCELED now; a running one is flagged and stops at its next step."""
        _not_found_if_unstorable(job_id)
        t = _jobs
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(select(t).where(t.c.id == job_id, t.c.key_id == key_id)).first()
            if row is None:
                raise RequestNotFoundError(f"Request '{job_id}' not found")
            job = Job.from_row(row)
            if job.status is JobStatus.QUEUED:
                row = conn.execute(
                    update(t)
                    .where(t.c.id == job_id, t.c.status == JobStatus.QUEUED.value)
                    .values(status=JobStatus.CANCELED.value, error=CANCELED_MESSAGE, updated_at=now, completed_at=now)
                    .returning(*t.c)
                ).first()
                if row is not None:
                    job = Job.from_row(row)
                    self._settle(conn, job, now)
                    self._changed(conn, job, JobStatus.QUEUED)
                    return job
            if job.status is JobStatus.PROCESSING or row is None:
                conn.execute(update(t).where(t.c.id == job_id).values(cancel_requested=True, updated_at=now))
            job = Job.from_row(conn.execute(select(t).where(t.c.id == job_id)).one())
        return job

    def recover_expired(self) -> list[Job]:
        """Requeue running jobs whose worker vanished (lease expired); past max_attempts, ERROR."""
        t = _jobs
        now = time.time()
        changed: list[Job] = []
        with self.db.transaction() as conn:
            rows = conn.execute(select(t).where(t.c.status == JobStatus.PROCESSING.value, t.c.lease_expires_at < now)).all()
            for row in rows:
                job = Job.from_row(row)
                if job.cancel_requested or job.attempts >= job.max_attempts:
                    final = JobStatus.CANCELED if job.cancel_requested else JobStatus.ERROR
                    error = (
                        CANCELED_MESSAGE
                        if job.cancel_requested
                        else f"The worker running this job stopped responding {job.attempts} time(s); giving up (not charged)"
                    )
                    new_row = conn.execute(
                        update(t)
                        .where(t.c.id == job.id, t.c.status == JobStatus.PROCESSING.value)
                        .values(status=final.value, error=error, lease_owner=None, lease_expires_at=None, updated_at=now, completed_at=now)
                        .returning(*t.c)
                    ).first()
                    if new_row is not None:
                        done = Job.from_row(new_row)
                        self._settle(conn, done, now)
                        self._changed(conn, done, JobStatus.PROCESSING)
                        changed.append(done)
                else:
                    new_row = conn.execute(
                        update(t)
                        .where(t.c.id == job.id, t.c.status == JobStatus.PROCESSING.value)
                        .values(status=JobStatus.QUEUED.value, lease_owner=None, lease_expires_at=None, progress=0.0, updated_at=now)
                        .returning(*t.c)
                    ).first()
                    if new_row is not None:
                        changed.append(Job.from_row(new_row))
        return changed

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
