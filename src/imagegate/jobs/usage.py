"""Usage: requests, images and spend per key, per model and per day, summed in SQL from the jobs.

A job counts when it ends (``completed_at``), on the UTC day it ended: that is when its hold is
captured or released. Spend is what the charged jobs (COMPLETED and FAILED) cost, after any
partial capture; ERROR and CANCELED jobs count as requests that cost nothing. Images are the
pictures a completed job returned (one ``has_nsfw_concepts`` verdict each; files a trainer returns
are not images).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import func, select

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.paging import Page, SortKey, TimeRange, fetch_page
from imagegate.jobs.status import JobStatus

SECONDS_PER_DAY = 86400

_jobs = schema.jobs


class UsageGroup(str, enum.Enum):
    DAY = "day"
    KEY = "key"
    MODEL = "model"


@dataclass
class UsageRow:
    day: int | None  # days since 1970-01-01 (UTC)
    key_id: str | None
    model_id: str | None
    requests: int
    images: int
    spend_micros: int


@dataclass
class UsageTotals:
    requests: int
    images: int
    spend_micros: int


@dataclass
class UsageFilter:
    period: TimeRange = TimeRange()  # of completed_at
    key_id: str | None = None
    model_id: str | None = None


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _day(self) -> Any:
        """The UTC day number of a job's completion. Epoch seconds make it plain arithmetic; the
        rounding down is spelled per database (PostgreSQL's cast rounds, SQLite's truncates, and
        every completion time is positive)."""
        # A literal, not a bound parameter: PostgreSQL must see the grouped expression and the
        # selected one as the same text.
        days = _jobs.c.completed_at / sa.literal_column(str(SECONDS_PER_DAY))
        if self.db.postgres:
            return sa.cast(func.floor(days), sa.BigInteger)
        return sa.cast(days, sa.Integer)

    def _image_count(self) -> Any:
        if self.db.postgres:
            return func.json_array_length(_jobs.c.output.op("->")("has_nsfw_concepts"))
        return func.json_array_length(_jobs.c.output, "$.has_nsfw_concepts")

    def _measures(self) -> list[Any]:
        charged = _jobs.c.status.in_([s.value for s in JobStatus if s.charged])
        completed = _jobs.c.status == JobStatus.COMPLETED.value
        return [
            func.count().label("requests"),
            func.coalesce(func.sum(sa.case((completed, func.coalesce(self._image_count(), 0)), else_=0)), 0).label("images"),
            func.coalesce(func.sum(sa.case((charged, _jobs.c.price_micros), else_=0)), 0).label("spend_micros"),
        ]

    def _ended(self, where: UsageFilter) -> list[Any]:
        t = _jobs
        clauses = [t.c.completed_at.is_not(None), *where.period.clauses(t.c.completed_at)]
        if where.key_id is not None:
            clauses.append(t.c.key_id == where.key_id)
        if where.model_id is not None:
            clauses.append(t.c.model_id == where.model_id)
        return clauses

    def page(
        self, where: UsageFilter, group_by: Iterable[UsageGroup], *, limit: int, cursor: str | None = None
    ) -> Page[UsageRow]:
        """One row per group, the latest day first, then by key and model id."""
        wanted = set(group_by)
        columns = {
            UsageGroup.DAY: SortKey("day", self._day(), True, int),
            UsageGroup.KEY: SortKey("key_id", _jobs.c.key_id, False, str),
            UsageGroup.MODEL: SortKey("model_id", _jobs.c.model_id, False, str),
        }
        keys = [key for group, key in columns.items() if group in wanted]
        query = (
            select(*(k.expression.label(k.label) for k in keys), *self._measures())
            .where(*self._ended(where))
            .group_by(*(k.expression for k in keys))
        )

        def convert(row: Any) -> UsageRow:
            m = row._mapping
            return UsageRow(
                day=m.get("day"), key_id=m.get("key_id"), model_id=m.get("model_id"),
                requests=int(m["requests"]), images=int(m["images"]), spend_micros=int(m["spend_micros"]),
            )

        with self.db.read() as conn:
            return fetch_page(conn, query, keys, cursor=cursor, limit=limit, convert=convert)

    def totals(self, where: UsageFilter) -> UsageTotals:
        with self.db.read() as conn:
            row = conn.execute(select(*self._measures()).where(*self._ended(where))).one()
        return UsageTotals(requests=int(row.requests), images=int(row.images), spend_micros=int(row.spend_micros))
