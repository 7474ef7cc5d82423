"""``JobStore``: the database and one repository per concern. Every SQL statement imagegate runs
lives in a repository of this package; nothing above it writes SQL.

- :attr:`JobStore.keys` — API keys, wallets, the ledger (:mod:`imagegate.jobs.keys`)
- :attr:`JobStore.jobs` — submit, claim, finish, cancel, recover (:mod:`imagegate.jobs.queue`)
- :attr:`JobStore.models` — the operator's model switches (:mod:`imagegate.jobs.switches`)
- :attr:`JobStore.outbox` — webhook events and attempts (:mod:`imagegate.jobs.outbox`)
- :attr:`JobStore.workers` — the worker registry (:mod:`imagegate.jobs.workers`)
- :attr:`JobStore.usage` — requests, images and spend per key, model and day (:mod:`imagegate.jobs.usage`)
- :attr:`JobStore.audit` — the audit log (:mod:`imagegate.jobs.audit`)
- :attr:`JobStore.admin_tokens` — the stored admin token (:mod:`imagegate.jobs.admin_tokens`)
- :attr:`JobStore.admin` — the operator's changes, each with its audit row (:mod:`imagegate.jobs.admin`)
- :attr:`JobStore.uploads` — files keys uploaded as inputs (:mod:`imagegate.jobs.uploads`)

Repositories share the store's :class:`~imagegate.jobs.database.Database`; their write methods
take an optional connection, so a caller can put several of them in one transaction. Changes are
announced on :attr:`JobStore.wakeups` (:mod:`imagegate.jobs.wakeups`) with their commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagegate.jobs.admin import AdminActions
from imagegate.jobs.admin_tokens import AdminTokenRepository
from imagegate.jobs.audit import AuditRepository
from imagegate.jobs.database import Database
from imagegate.jobs.keys import ApiKey, KeyRepository, LedgerEntry
from imagegate.jobs.outbox import OutboxRepository
from imagegate.jobs.queue import Job, JobRepository, NewJob
from imagegate.jobs.switches import ModelSwitchRepository
from imagegate.jobs.usage import UsageRepository
from imagegate.jobs.wakeups import Wakeups
from imagegate.jobs.uploads import Upload, UploadRepository
from imagegate.jobs.workers import WorkerRepository

if TYPE_CHECKING:
    from imagegate.config import Settings

__all__ = ["ApiKey", "Job", "JobStore", "LedgerEntry", "NewJob", "Upload"]


class JobStore:
    def __init__(self, url: str, *, pool_size: int = 16, webhook_retry_hours: float = 25.0) -> None:
        self.db = Database(url, pool_size=pool_size)
        self.wakeups = Wakeups(self.db)
        self.keys = KeyRepository(self.db, self.wakeups)
        self.models = ModelSwitchRepository(self.db, self.wakeups)
        self.outbox = OutboxRepository(self.db, self.wakeups, retry_seconds=webhook_retry_hours * 3600.0)
        self.jobs = JobRepository(self.db, self.keys, self.outbox, self.wakeups)
        self.workers = WorkerRepository(self.db)
        self.usage = UsageRepository(self.db)
        self.audit = AuditRepository(self.db)
        self.admin_tokens = AdminTokenRepository(self.db)
        self.admin = AdminActions(
            self.db, keys=self.keys, models=self.models, jobs=self.jobs, outbox=self.outbox, audit=self.audit, tokens=self.admin_tokens
        )
        self.uploads = UploadRepository(self.db)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "JobStore":
        return cls(settings.resolved_database_url, webhook_retry_hours=settings.webhook_retry_hours)

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def engine(self) -> Any:
        return self.db.engine

    def read(self) -> Any:
        """A read transaction (see :meth:`Database.read`)."""
        return self.db.read()

    def migrate(self) -> None:
        self.db.migrate()

    def dispose(self) -> None:
        self.wakeups.close()
        self.db.dispose()
