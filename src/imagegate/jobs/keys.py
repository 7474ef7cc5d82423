"""API keys, their wallets and the ledger.

A key's ``balance_micros`` always equals the sum of its ledger rows: every balance change and its
ledger row are written in one transaction. The wallet movements of a job (:meth:`hold`,
:meth:`release`, :meth:`settle`) take the job's own connection, so they commit with it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, fields
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from imagegate.exceptions import (
    AuthenticationError,
    InsufficientBalanceError,
    KeyDisabledError,
    RateLimitedError,
    RequestNotFoundError,
)
from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.ids import new_token
from imagegate.jobs.paging import Page, SortKey, fetch_page
from imagegate.jobs.status import LedgerKind
from imagegate.jobs.wakeups import Topic, Wakeups

KEY_PREFIX = "ig_"

_keys = schema.api_keys
_ledger = schema.ledger
_buckets = schema.rate_limits
_KEY_BY_HASH = select(_keys).where(_keys.c.key_hash == sa.bindparam("key_hash"))
_KEYS_NEWEST_FIRST = [SortKey("created_at", _keys.c.created_at, True, float), SortKey("id", _keys.c.id, True, str)]
_LEDGER_NEWEST_FIRST = [SortKey("id", _ledger.c.id, True, int)]


@dataclass
class ApiKey:
    id: str
    name: str
    key_prefix: str
    balance_micros: int
    disabled: bool
    webhook_secret: str
    created_at: float

    @classmethod
    def from_row(cls, row: Any) -> "ApiKey":
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})


@dataclass
class LedgerEntry:
    id: int
    key_id: str
    job_id: str | None
    kind: LedgerKind
    amount_micros: int
    created_at: float

    @classmethod
    def from_row(cls, row: Any) -> "LedgerEntry":
        m = row._mapping
        return cls(
            id=m["id"], key_id=m["key_id"], job_id=m["job_id"], kind=LedgerKind(m["kind"]),
            amount_micros=m["amount_micros"], created_at=m["created_at"],
        )


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


def new_webhook_secret() -> str:
    # Standard Webhooks secrets are standard base64 (not URL-safe): libraries decode them that way.
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class KeyRepository:
    def __init__(self, db: Database, wakeups: Wakeups) -> None:
        self.db = db
        self.wakeups = wakeups

    # -- keys -----------------------------------------------------------------------------------

    def create(self, *, name: str = "", balance_micros: int = 0, conn: Connection | None = None) -> tuple[str, ApiKey]:
        """A new key; returns its plaintext (shown once) and its record."""
        plaintext = KEY_PREFIX + new_token(24)
        now = time.time()
        key_id = "key_" + new_token(9)
        with self.db.transaction(conn) as conn:
            conn.execute(
                _keys.insert().values(
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
                self._move(conn, key_id, LedgerKind.TOPUP, balance_micros, None, now)
            row = conn.execute(select(_keys).where(_keys.c.id == key_id)).one()
        return plaintext, ApiKey.from_row(row)

    def find(self, key_or_id: str, conn: Connection | None = None) -> ApiKey:
        """Look a key up by its plaintext, its id or its displayed prefix (operator commands)."""
        with self.db.read(conn) as conn:
            row = conn.execute(
                select(_keys).where(
                    sa.or_(_keys.c.key_hash == hash_key(key_or_id), _keys.c.id == key_or_id, _keys.c.key_prefix == key_or_id)
                )
            ).first()
        if row is None:
            raise RequestNotFoundError(f"no API key matches {key_or_id!r}")
        return ApiKey.from_row(row)

    def get(self, key_id: str, conn: Connection | None = None) -> ApiKey:
        with self.db.read(conn) as conn:
            row = conn.execute(select(_keys).where(_keys.c.id == key_id)).first()
        if row is None:
            raise RequestNotFoundError(f"no API key {key_id!r}")
        return ApiKey.from_row(row)

    def list(self) -> list[ApiKey]:
        with self.db.read() as conn:
            rows = conn.execute(select(_keys).order_by(_keys.c.created_at)).all()
        return [ApiKey.from_row(r) for r in rows]

    def page(self, *, limit: int, cursor: str | None = None, disabled: bool | None = None) -> Page[ApiKey]:
        """Keys with their balances, newest first."""
        query = select(_keys)
        if disabled is not None:
            query = query.where(_keys.c.disabled.is_(disabled))
        with self.db.read() as conn:
            return fetch_page(conn, query, _KEYS_NEWEST_FIRST, cursor=cursor, limit=limit, convert=ApiKey.from_row)

    def authenticate(self, plaintext: str | None) -> ApiKey:
        if not plaintext:
            raise AuthenticationError("Missing API key")
        row = self.db.read_first(_KEY_BY_HASH, {"key_hash": hash_key(plaintext)})
        if row is None:
            raise AuthenticationError("Invalid API key")
        key = ApiKey.from_row(row)
        if key.disabled:
            raise KeyDisabledError("This API key is disabled")
        return key

    def topup(self, key_or_id: str, micros: int, conn: Connection | None = None) -> ApiKey:
        with self.db.transaction(conn) as conn:
            key = self.find(key_or_id, conn)
            self._move(conn, key.id, LedgerKind.TOPUP, micros, None, time.time())
            self.wakeups.publish(conn, Topic.KEY, key.id)
            return self.get(key.id, conn)

    def set_disabled(self, key_or_id: str, disabled: bool = True, conn: Connection | None = None) -> ApiKey:
        return self._update(key_or_id, {"disabled": disabled}, conn)

    def rotate_webhook_secret(self, key_or_id: str, conn: Connection | None = None) -> ApiKey:
        return self._update(key_or_id, {"webhook_secret": new_webhook_secret()}, conn)

    def _update(self, key_or_id: str, values: dict[str, Any], conn: Connection | None) -> ApiKey:
        with self.db.transaction(conn) as conn:
            key = self.find(key_or_id, conn)
            conn.execute(update(_keys).where(_keys.c.id == key.id).values(**values))
            self.wakeups.publish(conn, Topic.KEY, key.id)
            return self.get(key.id, conn)

    # -- the ledger -------------------------------------------------------------------------------

    def ledger_sum(self, key_id: str) -> int:
        with self.db.read() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(_ledger.c.amount_micros), 0)).where(_ledger.c.key_id == key_id)
            ).scalar_one()
        return int(total)

    def ledger(self, key_id: str) -> list[LedgerEntry]:
        with self.db.read() as conn:
            rows = conn.execute(select(_ledger).where(_ledger.c.key_id == key_id).order_by(_ledger.c.id)).all()
        return [LedgerEntry.from_row(r) for r in rows]

    def ledger_page(self, key_id: str, *, limit: int, cursor: str | None = None) -> Page[LedgerEntry]:
        """A key's ledger, newest entry first."""
        query = select(_ledger).where(_ledger.c.key_id == key_id)
        with self.db.read() as conn:
            return fetch_page(conn, query, _LEDGER_NEWEST_FIRST, cursor=cursor, limit=limit, convert=LedgerEntry.from_row)

    def balances(self) -> Iterator[tuple[str, int, int]]:
        """(key id, balance, ledger sum) for every key: the wallet invariant, for tests and checks."""
        for key in self.list():
            yield key.id, key.balance_micros, self.ledger_sum(key.id)

    # -- the rate limit (inside the submit's transaction) -------------------------------------------

    def take_token(self, conn: Connection, key_id: str, limit: RateLimit, now: float) -> None:
        """Take one token from the key's bucket, or raise RateLimitedError. The bucket is a row
        shared by every API process and host; one upsert refills and takes in one statement, and
        a refusal rolls back with the transaction, so a refused request costs no token."""
        if not limit.enabled:
            return
        b = _buckets
        least, greatest = (sa.func.least, sa.func.greatest) if self.db.postgres else (sa.func.min, sa.func.max)
        # ``now`` was read before this transaction waited for the row: a concurrent submit of
        # another process may have stored a later time. Time never runs backwards in the bucket,
        # or a high rate would turn those few milliseconds into a large debt of tokens.
        elapsed = greatest(0.0, now - b.c.updated_at)
        capped = least(float(limit.burst), b.c.tokens + elapsed * limit.per_second)
        insert = (pg_insert if self.db.postgres else sqlite_insert)(b).values(
            key_id=key_id, tokens=float(limit.burst) - 1.0, updated_at=now
        )
        stmt = insert.on_conflict_do_update(
            index_elements=[b.c.key_id], set_={"tokens": capped - 1.0, "updated_at": greatest(b.c.updated_at, now)}
        ).returning(b.c.tokens)
        tokens = conn.execute(stmt).scalar_one()
        if tokens < 0:
            raise RateLimitedError(-tokens / limit.per_second)

    # -- a job's money (inside the job's transaction) ---------------------------------------------

    def hold(self, conn: Connection, key_id: str, micros: int, job_id: str, now: float) -> None:
        """Take ``micros`` from the wallet for a job, or raise: a conditional update, so concurrent
        holds can never overdraw."""
        if micros <= 0:
            return
        held = conn.execute(
            update(_keys)
            .where(_keys.c.id == key_id, _keys.c.balance_micros >= micros)
            .values(balance_micros=_keys.c.balance_micros - micros)
        ).rowcount
        if not held:
            raise InsufficientBalanceError(micros)
        self._entry(conn, key_id, LedgerKind.HOLD, -micros, job_id, now)

    def release(self, conn: Connection, key_id: str, micros: int, job_id: str, now: float) -> None:
        """Give (part of) a hold back."""
        self._move(conn, key_id, LedgerKind.RELEASE, micros, job_id, now)

    def capture(self, conn: Connection, key_id: str, job_id: str, now: float) -> None:
        """The hold becomes the charge: the money already left the wallet, so the row is zero."""
        self._entry(conn, key_id, LedgerKind.CAPTURE, 0, job_id, now)

    def _move(self, conn: Connection, key_id: str, kind: LedgerKind, micros: int, job_id: str | None, now: float) -> None:
        conn.execute(update(_keys).where(_keys.c.id == key_id).values(balance_micros=_keys.c.balance_micros + micros))
        self._entry(conn, key_id, kind, micros, job_id, now)

    @staticmethod
    def _entry(conn: Connection, key_id: str, kind: LedgerKind, micros: int, job_id: str | None, now: float) -> None:
        conn.execute(
            _ledger.insert().values(key_id=key_id, job_id=job_id, kind=kind.value, amount_micros=micros, created_at=now)
        )
