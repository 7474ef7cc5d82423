"""Model switches: the operator's runtime on/off per catalog model (``imagegate models disable``)."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.wakeups import Topic, Wakeups

_states = schema.model_states


class ModelSwitchRepository:
    def __init__(self, db: Database, wakeups: Wakeups) -> None:
        self.db = db
        self.wakeups = wakeups

    def set_enabled(self, model_id: str, enabled: bool) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            done = conn.execute(
                update(_states).where(_states.c.model_id == model_id).values(enabled=enabled, updated_at=now)
            ).rowcount
            if not done:
                conn.execute(_states.insert().values(model_id=model_id, enabled=enabled, updated_at=now))
            self.wakeups.publish(conn, Topic.MODELS)

    def all(self) -> dict[str, bool]:
        """Every switch an operator has set; a model without one is enabled."""
        with self.db.read() as conn:
            rows = conn.execute(select(_states)).all()
        return {r.model_id: bool(r.enabled) for r in rows}
