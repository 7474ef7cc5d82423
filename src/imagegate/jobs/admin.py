"""The operator's changes, each committed together with its audit row.

The admin API and the command line make their changes through :class:`AdminActions` only, so
both leave the same trail: every method runs the change and writes its
:mod:`~imagegate.jobs.audit` row in one transaction. Keys are named by id here; resolving what an
operator typed (a key, a prefix) is the command line's business.
"""

from __future__ import annotations

from typing import Any

from imagegate.billing.money import format_usd
from imagegate.exceptions import ConflictError
from imagegate.jobs.admin_tokens import AdminTokenRepository, StoredAdminToken
from imagegate.jobs.audit import Actor, AuditAction, AuditRepository
from imagegate.jobs.database import Database
from imagegate.jobs.keys import ApiKey, KeyRepository
from imagegate.jobs.outbox import OutboxRepository, WebhookEvent
from imagegate.jobs.queue import Job, JobRepository
from imagegate.jobs.switches import ModelSwitchRepository


def _usd(micros: int | None) -> str | None:
    return None if micros is None else format_usd(micros)


class AdminActions:
    def __init__(
        self,
        db: Database,
        *,
        keys: KeyRepository,
        models: ModelSwitchRepository,
        jobs: JobRepository,
        outbox: OutboxRepository,
        audit: AuditRepository,
        tokens: AdminTokenRepository,
    ) -> None:
        self.db = db
        self.keys = keys
        self.models = models
        self.jobs = jobs
        self.outbox = outbox
        self.audit = audit
        self.tokens = tokens

    # -- keys -------------------------------------------------------------------------------------

    def create_key(self, actor: Actor, *, name: str, balance_micros: int) -> tuple[str, ApiKey]:
        with self.db.transaction() as conn:
            plaintext, key = self.keys.create(name=name, balance_micros=balance_micros, conn=conn)
            self.audit.record(conn, actor, AuditAction.KEY_CREATE, key.id, {"name": name, "balance": _usd(balance_micros)})
        return plaintext, key

    def topup(self, actor: Actor, key_id: str, micros: int) -> ApiKey:
        with self.db.transaction() as conn:
            self.keys.get(key_id, conn)
            key = self.keys.topup(key_id, micros, conn)
            self.audit.record(conn, actor, AuditAction.KEY_TOPUP, key.id, {"amount": _usd(micros), "balance": _usd(key.balance_micros)})
        return key

    def set_key_disabled(self, actor: Actor, key_id: str, disabled: bool) -> ApiKey:
        action = AuditAction.KEY_DISABLE if disabled else AuditAction.KEY_ENABLE
        with self.db.transaction() as conn:
            self.keys.get(key_id, conn)
            key = self.keys.set_disabled(key_id, disabled, conn)
            self.audit.record(conn, actor, action, key.id)
        return key

    def rotate_webhook_secret(self, actor: Actor, key_id: str) -> ApiKey:
        with self.db.transaction() as conn:
            self.keys.get(key_id, conn)
            key = self.keys.rotate_webhook_secret(key_id, conn)
            # The secret itself stays out of the log.
            self.audit.record(conn, actor, AuditAction.KEY_ROTATE_WEBHOOK_SECRET, key.id)
        return key

    # -- models (the caller checks the id is in the catalog) --------------------------------------

    def set_model_enabled(self, actor: Actor, model_id: str, enabled: bool) -> None:
        action = AuditAction.MODEL_ENABLE if enabled else AuditAction.MODEL_DISABLE
        with self.db.transaction() as conn:
            self.models.set_enabled(model_id, enabled, conn)
            self.audit.record(conn, actor, action, model_id)

    def set_model_price(self, actor: Actor, model_id: str, micros: int | None) -> None:
        """A runtime price per image for the model; None removes it."""
        action = AuditAction.MODEL_PRICE_CLEAR if micros is None else AuditAction.MODEL_PRICE_SET
        with self.db.transaction() as conn:
            previous = self.models.price_override(model_id, conn)
            self.models.set_price(model_id, micros, conn)
            self.audit.record(conn, actor, action, model_id, {"price": _usd(micros), "previous": _usd(previous)})

    # -- jobs and webhooks ------------------------------------------------------------------------

    def cancel_job(self, actor: Actor, job_id: str) -> Job:
        """Cancel any key's job, with the client's cancel rules (and settlement); a job that has
        already ended is a conflict, and changes nothing."""
        with self.db.transaction() as conn:
            ended = self.jobs.get(job_id, conn=conn).status
            if ended.terminal:
                raise ConflictError(f"Job '{job_id}' has already ended ({ended.value})")
            job = self.jobs.cancel(job_id, None, conn)
            detail: dict[str, Any] = {"key_id": job.key_id, "status": job.status.value, "cancel_requested": job.cancel_requested}
            self.audit.record(conn, actor, AuditAction.JOB_CANCEL, job.id, detail)
        return job

    def redeliver_webhook(self, actor: Actor, job_id: str) -> WebhookEvent | None:
        """Queue the job's final-status event again (see :meth:`OutboxRepository.redeliver`)."""
        with self.db.transaction() as conn:
            event = self.outbox.redeliver(job_id, conn=conn)
            if event is not None:
                detail = {"event_id": event.id, "event_type": event.event_type, "target_url": event.target_url}
                self.audit.record(conn, actor, AuditAction.WEBHOOK_REDELIVER, job_id, detail)
        return event

    # -- the admin token --------------------------------------------------------------------------

    def rotate_admin_token(self, actor: Actor) -> tuple[str, StoredAdminToken]:
        with self.db.transaction() as conn:
            plaintext, stored = self.tokens.replace(conn)
            self.audit.record(conn, actor, AuditAction.ADMIN_TOKEN_ROTATE, "admin_token", {"prefix": stored.token_prefix})
        return plaintext, stored
