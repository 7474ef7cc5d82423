"""Model switches: the operator's runtime on/off and price per catalog model (``imagegate models
disable``, the admin API)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database
from imagegate.jobs.wakeups import Topic, Wakeups

_states = schema.model_states


@dataclass(frozen=True)
class ModelSwitch:
    """What the operator set for a model at runtime; a model without a row is enabled, unpriced."""

    enabled: bool = True
    price_micros: int | None = None  # per image, over the catalog's and the config's price


class ModelSwitchRepository:
    def __init__(self, db: Database, wakeups: Wakeups) -> None:
        self.db = db
        self.wakeups = wakeups

    def set_enabled(self, model_id: str, enabled: bool, conn: Connection | None = None) -> None:
        self._set(model_id, {"enabled": enabled}, conn)

    def set_price(self, model_id: str, micros: int | None, conn: Connection | None = None) -> None:
        """A runtime price per image for the model; None removes it."""
        self._set(model_id, {"price_micros": micros}, conn)

    def _set(self, model_id: str, values: dict[str, Any], conn: Connection | None) -> None:
        now = time.time()
        with self.db.transaction(conn) as conn:
            done = conn.execute(
                update(_states).where(_states.c.model_id == model_id).values(**values, updated_at=now)
            ).rowcount
            if not done:
                row = {"enabled": True, "price_micros": None, **values}
                conn.execute(_states.insert().values(model_id=model_id, updated_at=now, **row))
            self.wakeups.publish(conn, Topic.MODELS)

    def all(self) -> dict[str, bool]:
        """Every switch an operator has set; a model without one is enabled."""
        return {model_id: switch.enabled for model_id, switch in self.states().items()}

    def states(self) -> dict[str, ModelSwitch]:
        with self.db.read() as conn:
            rows = conn.execute(select(_states)).all()
        return {r.model_id: ModelSwitch(bool(r.enabled), r.price_micros) for r in rows}

    def price_override(self, model_id: str, conn: Connection | None = None) -> int | None:
        with self.db.read(conn) as conn:
            row = conn.execute(select(_states.c.price_micros).where(_states.c.model_id == model_id)).first()
        return None if row is None else row.price_micros
