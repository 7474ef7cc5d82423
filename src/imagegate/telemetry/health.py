"""Readiness: can this process do its work now? One probe for both views.

The API's view (``GET /readyz``): the database answers, its schema is at this code's head, and at
least one live worker (heartbeat within ``lease_seconds``, neither unhealthy nor draining) serves
a model that is enabled. The enabled models no live worker serves are listed: their requests
stay queued until one does.

A worker's view (``imagegate worker --health-port``): the database answers, its schema is at
head, and the worker's own registry row is not unhealthy or stalled.

A result is kept for ``cache_seconds`` so that frequent probes from many sources cost one round of
queries per second at most.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from pydantic import BaseModel

from imagegate.catalog import MODELS
from imagegate.config import Settings
from imagegate.jobs.migrations import head_revision
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerInfo, WorkerState

log = logging.getLogger("imagegate.health")

OK = "ok"
CACHE_SECONDS = 1.0
NO_WORKER = "no live worker serves an enabled model"
# Worker states that take no new job.
NOT_SERVING = frozenset({WorkerState.UNHEALTHY, WorkerState.DRAINING})


class ReadinessReport(BaseModel):
    """The body of ``/readyz``: every check by name, ``"ok"`` or why not."""

    status: Literal["ready", "unready"]
    checks: dict[str, str]
    unserved_models: list[str] | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class Readiness:
    """Runs the checks of one view (the API's, or with ``worker_id`` that worker's)."""

    def __init__(
        self, settings: Settings, store: JobStore, *, worker_id: str | None = None, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.cache_seconds = cache_seconds
        self._head = head_revision()
        self._lock = threading.Lock()
        self._cached: ReadinessReport | None = None
        self._expires = 0.0

    def report(self) -> ReadinessReport:
        with self._lock:  # one caller runs the checks; the others wait for its answer
            now = time.monotonic()
            if self._cached is None or now >= self._expires:
                report = self._check()
                if self._cached is not None and report.ready != self._cached.ready:
                    log.log(logging.INFO if report.ready else logging.WARNING, "readiness: %s %s", report.status, report.checks)
                self._cached, self._expires = report, now + self.cache_seconds
            return self._cached

    def _check(self) -> ReadinessReport:
        last = "worker" if self.worker_id is not None else "workers"
        checks = dict.fromkeys(("database", "schema", last), "not checked: an earlier check failed")
        unserved: list[str] | None = None
        running = "database"
        try:
            self.store.db.ping()
            checks["database"] = OK
            running = "schema"
            revision = self.store.db.schema_revision()
            checks["schema"] = OK if revision == self._head else f"at revision {revision}, this code's head is {self._head}"
            running = last
            if self.worker_id is not None:
                checks[last] = self._own_row(self.store.workers.get(self.worker_id))
            else:
                checks[last], unserved = self._fleet()
        except Exception as exc:  # a probe answers with the failure; it never fails itself
            checks[running] = f"{type(exc).__name__}: {_first_line(exc)}"
        status = "ready" if all(value == OK for value in checks.values()) else "unready"
        return ReadinessReport(status=status, checks=checks, unserved_models=unserved)

    def _fleet(self) -> tuple[str, list[str]]:
        now = time.time()
        live = [w for w in self.store.workers.list() if w.live(now, self.settings.lease_seconds) and w.state not in NOT_SERVING]
        switches = self.store.models.all()
        enabled = [m for m in MODELS if self.settings.model(m).enabled and switches.get(m, True)]
        unserved = [m for m in enabled if not any(w.serves(m) for w in live)]
        if not enabled:
            return "no model is enabled", unserved
        if len(unserved) == len(enabled):
            return NO_WORKER, unserved
        return OK, unserved

    def _own_row(self, row: WorkerInfo | None) -> str:
        # No row (yet): the worker has not registered, or was swept and registers again.
        if row is None:
            return OK
        if row.state is WorkerState.UNHEALTHY:
            return f"unhealthy: {row.last_error or 'its loop keeps failing'}"
        if not row.live(time.time(), self.settings.lease_seconds):
            return f"stalled: no heartbeat for {time.time() - row.heartbeat_at:.0f} s"
        return OK


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else ""
