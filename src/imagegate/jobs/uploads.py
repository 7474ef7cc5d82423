"""Files a key uploaded (``POST /v2/files``): the row that says whose a stored file is and until
when. The bytes live in the media storage under ``storage_key``."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.ids import unstorable

_uploads = schema.uploads
_UPLOAD_BY_ID = select(_uploads).where(_uploads.c.id == sa.bindparam("upload_id"))


@dataclass
class Upload:
    id: str
    key_id: str
    storage_key: str
    content_type: str
    size: int
    created_at: float
    expires_at: float

    @classmethod
    def from_row(cls, row: Any) -> "Upload":
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})

    def readable_by(self, key_id: str | None, now: float | None = None) -> bool:
        """Uploads are private to the key that made them, and only until they expire."""
        return key_id == self.key_id and (time.time() if now is None else now) < self.expires_at


class UploadRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, upload: Upload, conn: Connection | None = None) -> Upload:
        with self.db.transaction(conn) as conn:
            conn.execute(_uploads.insert().values(**{f.name: getattr(upload, f.name) for f in fields(Upload)}))
        return upload

    def get(self, upload_id: str) -> Upload | None:
        if unstorable(upload_id):
            return None
        row = self.db.read_first(_UPLOAD_BY_ID, {"upload_id": upload_id})
        return None if row is None else Upload.from_row(row)

    def expired(self, now: float | None = None, limit: int = 200) -> list[Upload]:
        """Uploads past their expiry, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(_uploads)
                .where(_uploads.c.expires_at <= (time.time() if now is None else now))
                .order_by(_uploads.c.expires_at)
                .limit(limit)
            ).all()
        return [Upload.from_row(row) for row in rows]

    def delete(self, upload_ids: list[str]) -> None:
        if not upload_ids:
            return
        with self.db.transaction() as conn:
            conn.execute(delete(_uploads).where(_uploads.c.id.in_(upload_ids)))
