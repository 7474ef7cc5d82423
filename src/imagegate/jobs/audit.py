"""The audit log: who changed what, when, through the admin API or the operator's command line.

Rows are written by :class:`~imagegate.jobs.admin.AdminActions` in the transaction of the change
they describe, so the log holds a row if and only if its change was committed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.paging import Page, SortKey, TimeRange, fetch_page

_audit = schema.audit_log


class Actor(str, enum.Enum):
    ADMIN_API = "admin-api"
    CLI = "cli"


class AuditAction(str, enum.Enum):
    KEY_CREATE = "key.create"
    KEY_TOPUP = "key.topup"
    KEY_DISABLE = "key.disable"
    KEY_ENABLE = "key.enable"
    KEY_ROTATE_WEBHOOK_SECRET = "key.rotate_webhook_secret"
    MODEL_ENABLE = "model.enable"
    MODEL_DISABLE = "model.disable"
    MODEL_PRICE_SET = "model.price_set"
    MODEL_PRICE_CLEAR = "model.price_clear"
    JOB_CANCEL = "job.cancel"
    WEBHOOK_REDELIVER = "webhook.redeliver"
    ADMIN_TOKEN_ROTATE = "admin_token.rotate"


@dataclass
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> "AuditEntry":
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})


@dataclass
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    period: TimeRange = TimeRange()


_NEWEST_FIRST = [SortKey("id", _audit.c.id, True, int)]


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def record(conn: Connection, actor: Actor, action: AuditAction, target: str | None, detail: dict[str, Any] | None = None) -> None:
        """Write one row in the caller's transaction (the change's own)."""
        conn.execute(
            _audit.insert().values(at=time.time(), actor=actor.value, action=action.value, target=target, detail=detail)
        )

    def page(self, where: AuditFilter, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]:
        a = _audit
        query = select(a)
        for column, value in ((a.c.actor, where.actor), (a.c.action, where.action), (a.c.target, where.target)):
            if value is not None:
                query = query.where(column == value)
        query = query.where(*where.period.clauses(a.c.at))
        with self.db.read() as conn:
            return fetch_page(conn, query, _NEWEST_FIRST, cursor=cursor, limit=limit, convert=AuditEntry.from_row)
