"""``JobStore`` owns every SQL statement: keys, the wallet's ledger, jobs and model switches.

Invariants it keeps, on SQLite and PostgreSQL alike:

- A key's ``balance_micros`` always equals the sum of its ledger rows: every balance change and
  its ledger row are written in one transaction.
- Money is held at submit (in the same transaction that inserts the job, with a conditional
  ``UPDATE … WHERE balance >= price`` so concurrent submits cannot overdraw), captured when the
  job ends COMPLETED or FAILED, released when it ends ERROR or CANCELED.
- A job is claimed in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
  writers with ``BEGIN IMMEDIATE``). Only the worker that holds the lease can finish a job, so a
  job re-claimed after its lease expired cannot be finished twice.
- Transition hooks run inside the transaction of the transition (the webhook outbox uses this):
  an event is recorded if and only if the status change is.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy import and_, event, func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from imagegate.exceptions import (
    AuthenticationError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    KeyDisabledError,
    RequestNotFoundError,
)
from imagegate.jobs import schema
from imagegate.jobs.ids import new_request_id, new_token
from imagegate.jobs.status import JobStatus, LedgerKind

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600


@dataclass
class ApiKey:
    id: str
    name: str
    key_prefix: str
    balance_micros: int
    disabled: bool
    webhook_secret: str
    created_at: float


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


# (connection, job after the change, previous status) -> None; runs inside the transaction.
TransitionHook = Callable[[Connection, Job, JobStatus | None], None]


def new_webhook_secret() -> str:
    # Standard Webhooks secrets are standard base64 (not URL-safe): libraries decode them that way.
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _not_found_if_unstorable(job_id: str) -> None:
    """An id no job can have (a NUL, which PostgreSQL text refuses, or a lone surrogate, which no
    driver can encode) is simply not found, rather than an error from the database."""
    if "\x00" in job_id or any("\ud800" <= ch <= "\udfff" for ch in job_id):
        shown = job_id.encode("utf-8", "backslashreplace").decode("utf-8")
        raise RequestNotFoundError(f"Request '{shown}' not found")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


# The statements of the hottest reads (every status poll, every uncached key), built once.
_JOB_BY_ID = select(schema.jobs).where(schema.jobs.c.id == sa.bindparam("job_id"))
_OWN_JOB_BY_ID = _JOB_BY_ID.where(schema.jobs.c.key_id == sa.bindparam("key_id"))
_KEY_BY_HASH = select(schema.api_keys).where(schema.api_keys.c.key_hash == sa.bindparam("key_hash"))
_ANY_QUEUED = select(schema.jobs.c.id).where(schema.jobs.c.status == JobStatus.QUEUED.value).limit(1)
_ANY_QUEUED_FOR = (
    select(schema.jobs.c.id)
    .where(schema.jobs.c.status == JobStatus.QUEUED.value, schema.jobs.c.model_id.in_(sa.bindparam("model_ids", expanding=True)))
    .limit(1)
)


def _key_from_row(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(**{f.name: m[f.name] for f in fields(ApiKey)})


class JobStore:
    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.dialect = sa.engine.make_url(url).get_backend_name()
        self.transition_hooks: list[TransitionHook] = []
        self._hooks_lock = threading.Lock()
        if self.dialect == "sqlite":
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, connect_args={"check_same_thread": False, "timeout": 60}
            )
            self._configure_sqlite(self.engine)
            # SQLite's connections already run in autocommit (the begin hook opens transactions).
            self._single_reads = self.engine
        else:
            # Transactions check their connection before use (pre-ping): a write that meets a
            # connection the server dropped (a restart) must not fail or, worse, be retried blind.
            self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
            # Single reads, the hot path of status polls, skip that extra round trip: a SELECT is
            # safe to repeat, so _read_first retries once on a dropped connection instead.
            self._single_reads = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, isolation_level="AUTOCOMMIT"
            )

    @staticmethod
    def _configure_sqlite(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's implicit transactions would start as DEFERRED and fail to upgrade to a
            # write lock under concurrency (SQLITE_BUSY without waiting); take the write lock
            # up front instead, and let WAL keep readers unblocked.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.info.get("single_read"):
                return  # one SELECT is atomic on its own: no transaction to open or roll back
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write", True) else "BEGIN")

    # -- plumbing -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from imagegate.jobs.migrations import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._single_reads is not self.engine:
            self._single_reads.dispose()

    def _write(self) -> Any:
        return self.engine.begin()

    class _ReadCtx:
        """A read-only transaction; on SQLite it must not take the write lock (BEGIN, not IMMEDIATE)."""

        def __init__(self, engine: Engine) -> None:
            self.engine = engine

        def __enter__(self) -> Connection:
            self.conn = self.engine.connect()
            self.conn.info["write"] = False
            self.tx = self.conn.begin()
            return self.conn

        def __exit__(self, *exc: Any) -> None:
            try:
                self.tx.rollback()
            finally:
                self.conn.info["write"] = True
                self.conn.close()

    def _read_first(self, statement: Any, params: dict[str, Any]) -> Any:
        """One SELECT, one row: the hot read path of polls and key lookups. A single statement is
        atomic on its own, so it runs outside a transaction (no BEGIN and ROLLBACK round trips)."""
        try:
            return self._single_read(statement, params)
        except sa.exc.DBAPIError as exc:
            # A connection the server dropped invalidates the whole pool; the retry connects
            # afresh. A server that is really down fails the retry too (the API answers 503).
            if not exc.connection_invalidated:
                raise
        return self._single_read(statement, params)

    def _single_read(self, statement: Any, params: dict[str, Any]) -> Any:
        with self._single_reads.connect() as conn:
            conn.info["single_read"] = True
            try:
                return conn.execute(statement, params).first()
            finally:
                if not conn.invalidated:  # an invalidated connection has no record left to reset
                    conn.info["single_read"] = False

    def read(self) -> "_ReadCtx":
        """A read transaction for the classes that own other tables on this store's engine."""
        return self._ReadCtx(self.engine)

    def add_transition_hook(self, hook: TransitionHook) -> None:
        with self._hooks_lock:
            if hook not in self.transition_hooks:
                self.transition_hooks.append(hook)

    def _fire(self, conn: Connection, job: Job, previous: JobStatus | None) -> None:
        for hook in self.transition_hooks:
            hook(conn, job, previous)

    def _ledger(self, conn: Connection, key_id: str, kind: LedgerKind, amount: int, job_id: str | None, now: float) -> None:
        conn.execute(
            schema.ledger.insert().values(key_id=key_id, job_id=job_id, kind=kind.value, amount_micros=amount, created_at=now)
        )

    # -- keys and wallet ----------------------------------------------------------------------

    def create_key(self, *, name: str = "", balance_micros: int = 0) -> tuple[str, ApiKey]:
        plaintext = "ig_" + new_token(24)
        now = time.time()
        key_id = "key_" + new_token(9)
        with self._write() as conn:
            conn.execute(
                schema.api_keys.insert().values(
                    id=key_id,
                    name=name,
                    key_hash=hash_key(plaintext),
                    key_prefix=plaintext[:10],
                    balance_micros=0,
                    disabled=False,
                    webhook_secret=new_webhook_secret(),
                    created_at=now,
                )
            )
            if balance_micros:
                self._topup(conn, key_id, balance_micros, now)
            row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).one()
        return plaintext, _key_from_row(row)

    def _topup(self, conn: Connection, key_id: str, micros: int, now: float) -> None:
        conn.execute(
            update(schema.api_keys)
            .where(schema.api_keys.c.id == key_id)
            .values(balance_micros=schema.api_keys.c.balance_micros + micros)
        )
        self._ledger(conn, key_id, LedgerKind.TOPUP, micros, None, now)

    def find_key(self, key_or_id: str) -> ApiKey:
        """Look a key up by its plaintext, its id or its displayed prefix (operator commands)."""
        t = schema.api_keys
        with self.read() as conn:
            row = conn.execute(
                select(t).where(sa.or_(t.c.key_hash == hash_key(key_or_id), t.c.id == key_or_id, t.c.key_prefix == key_or_id))
            ).first()
        if row is None:
            raise RequestNotFoundError(f"no API key matches {key_or_id!r}")
        return _key_from_row(row)

    def topup(self, key_or_id: str, micros: int) -> ApiKey:
        key = self.find_key(key_or_id)
        with self._write() as conn:
            self._topup(conn, key.id, micros, time.time())
        return self.find_key(key.id)

    def set_key_disabled(self, key_or_id: str, disabled: bool = True) -> ApiKey:
        key = self.find_key(key_or_id)
        with self._write() as conn:
            conn.execute(update(schema.api_keys).where(schema.api_keys.c.id == key.id).values(disabled=disabled))
        return self.find_key(key.id)

    def rotate_webhook_secret(self, key_or_id: str) -> ApiKey:
        key = self.find_key(key_or_id)
        with self._write() as conn:
            conn.execute(
                update(schema.api_keys).where(schema.api_keys.c.id == key.id).values(webhook_secret=new_webhook_secret())
            )
        return self.find_key(key.id)

    def list_keys(self) -> list[ApiKey]:
        with self.read() as conn:
            rows = conn.execute(select(schema.api_keys).order_by(schema.api_keys.c.created_at)).all()
        return [_key_from_row(r) for r in rows]

    def authenticate(self, plaintext: str | None) -> ApiKey:
        if not plaintext:
            raise AuthenticationError("Missing API key")
        row = self._read_first(_KEY_BY_HASH, {"key_hash": hash_key(plaintext)})
        if row is None:
            raise AuthenticationError("Invalid API key")
        key = _key_from_row(row)
        if key.disabled:
            raise KeyDisabledError("This API key is disabled")
        return key

    def get_key(self, key_id: str) -> ApiKey:
        with self.read() as conn:
            row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).one()
        return _key_from_row(row)

    def ledger_sum(self, key_id: str) -> int:
        with self.read() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(schema.ledger.c.amount_micros), 0)).where(schema.ledger.c.key_id == key_id)
            ).scalar_one()
        return int(total)

    def ledger_rows(self, key_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                select(schema.ledger).where(schema.ledger.c.key_id == key_id).order_by(schema.ledger.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    # -- models -------------------------------------------------------------------------------

    def set_model_enabled(self, model_id: str, enabled: bool) -> None:
        t = schema.model_states
        now = time.time()
        with self._write() as conn:
            done = conn.execute(update(t).where(t.c.model_id == model_id).values(enabled=enabled, updated_at=now)).rowcount
            if not done:
                conn.execute(t.insert().values(model_id=model_id, enabled=enabled, updated_at=now))

    def model_switches(self) -> dict[str, bool]:
        with self.read() as conn:
            rows = conn.execute(select(schema.model_states)).all()
        return {r.model_id: bool(r.enabled) for r in rows}

    # -- jobs: submit and read ------------------------------------------------------------------

    def submit(self, new: NewJob) -> tuple[Job, bool]:
        """Hold the price and insert the job in one transaction. Returns (job, created).

        With an idempotency key already used by this API key within 24 h, the original job is
        returned (created=False) when the body matches, and 409 is raised when it differs.
        """
        for _ in range(3):
            try:
                return self._submit_once(new)
            except IntegrityError:
                # A concurrent submit with the same Idempotency-Key won the unique index; the
                # next round finds its job.
                continue
        raise IdempotencyConflictError("Idempotency-Key is being used by a concurrent request")

    def _submit_once(self, new: NewJob) -> tuple[Job, bool]:
        now = time.time()
        t = schema.jobs
        with self._write() as conn:
            if new.idempotency_key:
                row = conn.execute(
                    select(t).where(t.c.key_id == new.key_id, t.c.idempotency_key == new.idempotency_key)
                ).first()
                if row is not None:
                    existing = Job.from_row(row)
                    if existing.created_at >= now - IDEMPOTENCY_WINDOW_SECONDS:
                        if existing.request_hash != new.request_hash:
                            raise IdempotencyConflictError(
                                "Idempotency-Key was already used with a different request body"
                            )
                        return existing, False
                    # Outside the window the key is free again.
                    conn.execute(update(t).where(t.c.id == existing.id).values(idempotency_key=None))
            if new.price_micros > 0:
                k = schema.api_keys
                held = conn.execute(
                    update(k)
                    .where(k.c.id == new.key_id, k.c.balance_micros >= new.price_micros)
                    .values(balance_micros=k.c.balance_micros - new.price_micros)
                ).rowcount
                if not held:
                    raise InsufficientBalanceError(new.price_micros)
            job_id = new_request_id(new.public_model_id or new.model_id)
            if new.price_micros > 0:
                self._ledger(conn, new.key_id, LedgerKind.HOLD, -new.price_micros, job_id, now)
            values = dict(
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
            conn.execute(t.insert().values(**values))
            job = Job.from_row(conn.execute(select(t).where(t.c.id == job_id)).one())
            self._fire(conn, job, None)
        return job, True

    def get_job(self, job_id: str, key_id: str | None = None) -> Job:
        _not_found_if_unstorable(job_id)
        if key_id is None:
            row = self._read_first(_JOB_BY_ID, {"job_id": job_id})
        else:
            row = self._read_first(_OWN_JOB_BY_ID, {"job_id": job_id, "key_id": key_id})
        if row is None:
            raise RequestNotFoundError(f"Request '{job_id}' not found")
        return Job.from_row(row)

    def list_jobs(self, *, key_id: str | None = None, statuses: Iterable[JobStatus] | None = None) -> list[Job]:
        t = schema.jobs
        query = select(t).order_by(t.c.created_at)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        if statuses is not None:
            query = query.where(t.c.status.in_([s.value for s in statuses]))
        with self.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query).all()]

    # -- jobs: the worker's side ----------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float, model_ids: Iterable[str] | None = None) -> Job | None:
        """Claim the oldest queued job in one statement, or return None."""
        t = schema.jobs
        now = time.time()
        pick = select(t.c.id).where(t.c.status == JobStatus.QUEUED.value)
        if model_ids is not None:
            pick = pick.where(t.c.model_id.in_(list(model_ids)))
        pick = pick.order_by(t.c.created_at).limit(1)
        if self.dialect == "postgresql":
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
        with self._write() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            job = Job.from_row(row)
            self._fire(conn, job, JobStatus.QUEUED)
        return job

    def has_queued(self, model_ids: Iterable[str] | None = None) -> bool:
        """The idle worker's cheap check before it tries a claim (a write) in earnest."""
        if model_ids is None:
            return self._read_first(_ANY_QUEUED, {}) is not None
        return self._read_first(_ANY_QUEUED_FOR, {"model_ids": list(model_ids)}) is not None

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float, progress: float | None = None) -> bool | None:
        """Renew the lease. Returns whether a cancel was requested, or None if the lease is lost."""
        t = schema.jobs
        now = time.time()
        values: dict[str, Any] = {"lease_expires_at": now + lease_seconds}
        if progress is not None:
            values.update(progress=progress, updated_at=now)
        with self._write() as conn:
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
                self._fire(conn, job, JobStatus.PROCESSING)
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
        t = schema.jobs
        now = time.time()
        with self._write() as conn:
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
                refund = job.price_micros - charge_micros
                self._refund(conn, job.key_id, refund, job.id, now)
                row = conn.execute(
                    update(t).where(t.c.id == job_id).values(price_micros=charge_micros).returning(*t.c)
                ).one()
                job = Job.from_row(row)
            self._settle(conn, job, now)
            self._fire(conn, job, JobStatus.PROCESSING)
        return job

    def _refund(self, conn: Connection, key_id: str, micros: int, job_id: str, now: float) -> None:
        k = schema.api_keys
        conn.execute(update(k).where(k.c.id == key_id).values(balance_micros=k.c.balance_micros + micros))
        self._ledger(conn, key_id, LedgerKind.RELEASE, micros, job_id, now)

    def _settle(self, conn: Connection, job: Job, now: float) -> None:
        if job.price_micros <= 0:
            return
        if job.status.charged:
            self._ledger(conn, job.key_id, LedgerKind.CAPTURE, 0, job.id, now)
        else:
            self._refund(conn, job.key_id, job.price_micros, job.id, now)

    def release_lease(self, job_id: str, worker_id: str) -> bool:
        """Put a running job back in the queue (graceful shutdown past its grace period)."""
        t = schema.jobs
        with self._write() as conn:
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
        t = schema.jobs
        now = time.time()
        with self._write() as conn:
            row = conn.execute(select(t).where(t.c.id == job_id, t.c.key_id == key_id)).first()
            if row is None:
                raise RequestNotFoundError(f"Request '{job_id}' not found")
            job = Job.from_row(row)
            if job.status is JobStatus.QUEUED:
                row = conn.execute(
                    update(t)
                    .where(t.c.id == job_id, t.c.status == JobStatus.QUEUED.value)
                    .values(status=JobStatus.CANCELED.value, error="Canceled by the client", updated_at=now, completed_at=now)
                    .returning(*t.c)
                ).first()
                if row is not None:
                    job = Job.from_row(row)
                    self._settle(conn, job, now)
                    self._fire(conn, job, JobStatus.QUEUED)
                    return job
            if job.status is JobStatus.PROCESSING or row is None:
                conn.execute(update(t).where(t.c.id == job_id).values(cancel_requested=True, updated_at=now))
            job = Job.from_row(conn.execute(select(t).where(t.c.id == job_id)).one())
        return job

    def jobs_with_expired_media(self, completed_before: float, limit: int = 200) -> list[tuple[str, list[str]]]:
        """``(job id, media keys)`` of completed jobs finished before ``completed_before`` whose
        media the retention sweep has not deleted yet, oldest first."""
        t = schema.jobs
        with self.read() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.output)
                .where(
                    t.c.status == JobStatus.COMPLETED.value,
                    t.c.completed_at < completed_before,
                    t.c.media_deleted_at.is_(None),
                )
                .order_by(t.c.completed_at)
                .limit(limit)
            ).all()
        return [(row.id, [item["key"] for item in (row.output or {}).get("media", [])]) for row in rows]

    def mark_media_deleted(self, job_ids: Iterable[str], now: float | None = None) -> None:
        t = schema.jobs
        ids = list(job_ids)
        if not ids:
            return
        with self._write() as conn:
            conn.execute(update(t).where(t.c.id.in_(ids)).values(media_deleted_at=time.time() if now is None else now))

    def recover_expired(self) -> list[Job]:
        """Requeue running jobs whose worker vanished (lease expired); past max_attempts, ERROR."""
        t = schema.jobs
        now = time.time()
        changed: list[Job] = []
        with self._write() as conn:
            rows = conn.execute(
                select(t).where(t.c.status == JobStatus.PROCESSING.value, t.c.lease_expires_at < now)
            ).all()
            for row in rows:
                job = Job.from_row(row)
                if job.cancel_requested or job.attempts >= job.max_attempts:
                    final = JobStatus.CANCELED if job.cancel_requested else JobStatus.ERROR
                    error = (
                        "Canceled by the client"
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
                        self._fire(conn, done, JobStatus.PROCESSING)
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

    def iter_all_keys_balanced(self) -> Iterator[tuple[str, int, int]]:
        """(key id, balance, ledger sum) for every key: the wallet invariant, for tests and checks."""
        for key in self.list_keys():
            yield key.id, key.balance_micros, self.ledger_sum(key.id)
