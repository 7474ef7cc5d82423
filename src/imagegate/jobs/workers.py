"""The worker registry: every worker process's row, refreshed by its heartbeat.

A worker registers when it starts, heartbeats while it lives (its state, the models it holds, the
job it runs) and deregisters on a clean stop. A worker whose heartbeat is older than the lease is
*stalled*: the sweep in :meth:`~imagegate.jobs.queue.JobRepository.recover_expired` frees its jobs.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, fields
from typing import Any, Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from imagegate.jobs import schema
from imagegate.jobs.database import Database

_workers = schema.workers


class WorkerState(str, enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"  # its own loop keeps failing (it says so, and backs off)
    DRAINING = "draining"  # stopping: finishes its job, claims no new one


@dataclass
class WorkerInfo:
    id: str
    host: str
    pid: int
    device: str
    gpu: int | None
    version: str
    models: list[str] | None
    loaded: list[str]
    state: WorkerState
    current_job: str | None
    last_error: str | None
    started_at: float
    heartbeat_at: float

    @classmethod
    def from_row(cls, row: Any) -> "WorkerInfo":
        data = dict(row._mapping)
        data["state"] = WorkerState(data["state"])
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def live(self, now: float, lease_seconds: float) -> bool:
        return now - self.heartbeat_at <= lease_seconds

    def serves(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models


class WorkerRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, info: WorkerInfo) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(_workers).where(_workers.c.id == info.id))
            conn.execute(
                _workers.insert().values(
                    id=info.id, host=info.host, pid=info.pid, device=info.device, gpu=info.gpu, version=info.version,
                    models=info.models, loaded=info.loaded, state=info.state.value, current_job=info.current_job,
                    last_error=info.last_error, started_at=info.started_at, heartbeat_at=info.heartbeat_at,
                )
            )

    def heartbeat(
        self,
        worker_id: str,
        *,
        state: WorkerState,
        loaded: Iterable[str],
        current_job: str | None,
        last_error: str | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Refresh the row; False when it is gone (swept as stalled: the worker re-registers)."""
        with self.db.transaction(conn) as conn:
            return bool(
                conn.execute(
                    update(_workers)
                    .where(_workers.c.id == worker_id)
                    .values(
                        state=state.value, loaded=sorted(loaded), current_job=current_job,
                        last_error=last_error, heartbeat_at=time.time(),
                    )
                ).rowcount
            )

    def deregister(self, worker_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(_workers).where(_workers.c.id == worker_id))

    def list(self) -> list[WorkerInfo]:
        with self.db.read() as conn:
            rows = conn.execute(select(_workers).order_by(_workers.c.started_at)).all()
        return [WorkerInfo.from_row(r) for r in rows]

    def get(self, worker_id: str) -> WorkerInfo | None:
        with self.db.read() as conn:
            row = conn.execute(select(_workers).where(_workers.c.id == worker_id)).first()
        return WorkerInfo.from_row(row) if row is not None else None
