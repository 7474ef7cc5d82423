"""The admin API's stored bearer token (``imagegate admin token --rotate``).

Only its SHA-256 hash is kept, in the database every API process and host already shares, so a
rotation reaches all of them. There is at most one: a rotation replaces it. A token set in the
configuration (``admin_token``) wins over the stored one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.ids import new_token
from imagegate.jobs.keys import hash_key

ADMIN_TOKEN_PREFIX = "iga_"

_tokens = schema.admin_tokens


@dataclass
class StoredAdminToken:
    token_hash: str
    token_prefix: str
    created_at: float


class AdminTokenRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def current(self) -> StoredAdminToken | None:
        row = self.db.read_first(select(_tokens).order_by(_tokens.c.created_at.desc()).limit(1), {})
        return None if row is None else StoredAdminToken(row.token_hash, row.token_prefix, row.created_at)

    def replace(self, conn: Connection | None = None) -> tuple[str, StoredAdminToken]:
        """A new token in place of any stored one; returns its plaintext (shown once)."""
        plaintext = ADMIN_TOKEN_PREFIX + new_token(32)
        stored = StoredAdminToken(hash_key(plaintext), plaintext[:10], time.time())
        with self.db.transaction(conn) as conn:
            conn.execute(delete(_tokens))
            conn.execute(
                _tokens.insert().values(token_hash=stored.token_hash, token_prefix=stored.token_prefix, created_at=stored.created_at)
            )
        return plaintext, stored
