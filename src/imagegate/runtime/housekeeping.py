"""Housekeeping in ``imagegate serve``: one background thread that frees the jobs of stalled
workers (the stalled-worker sweep) and, at start and then hourly, deletes what has outlived its
retention: finished webhook deliveries (``webhook_retention_days``), the output media of
completed jobs (``media_retention_days``) and expired uploads (``upload_ttl_hours``). Each sweep
lives with what it cleans (:meth:`~imagegate.jobs.outbox.OutboxRepository.purge_expired`,
:func:`~imagegate.media.retention.purge_expired_media`,
:func:`~imagegate.media.uploads.purge_expired_uploads`); this module only runs them.
"""

from __future__ import annotations

import logging
import threading
import time

from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.media.retention import purge_expired_media
from imagegate.media.storage import Storage, storage_for
from imagegate.media.uploads import purge_expired_uploads

log = logging.getLogger("imagegate.runtime.housekeeping")

SWEEP_INTERVAL_SECONDS = 3600.0


def sweep(store: JobStore, settings: Settings, storage: Storage, now: float | None = None) -> dict[str, int]:
    """Run every retention sweep once; returns how much each deleted. A failing sweep (the
    database restarting, the storage unreachable) is logged and waits for the next round."""
    counts: dict[str, int] = {}
    sweeps = {
        "webhook deliveries": lambda: store.outbox.purge_expired(settings.webhook_retention_days, now),
        "jobs' media": lambda: purge_expired_media(store, storage, settings.media_retention_days, now),
        "expired uploads": lambda: purge_expired_uploads(store, storage, now),
    }
    for name, run in sweeps.items():
        try:
            counts[name] = run()
        except Exception:
            log.exception("retention sweep of %s failed", name)
            continue
        if counts[name]:
            log.info("deleted %d %s past their retention", counts[name], name)
    return counts


def sweep_stalled_workers(store: JobStore, settings: Settings) -> int:
    """Free the jobs of workers whose heartbeat expired; returns how many jobs it moved."""
    try:
        freed = store.jobs.recover_stalled(settings.lease_seconds)
    except Exception:
        log.exception("stalled-worker sweep failed")
        return 0
    for job in freed:
        log.warning("job %s: its worker stopped heartbeating; now %s", job.id, job.status.value)
    return len(freed)


def start_housekeeping_thread(store: JobStore, settings: Settings) -> tuple[threading.Thread, threading.Event]:
    """Retention sweeps at start and hourly; the stalled-worker sweep every third of a lease (a
    read that finds nothing costs one statement)."""
    stop = threading.Event()
    storage = storage_for(settings)
    stalled_every = max(1.0, settings.lease_seconds / 3.0)

    def run() -> None:
        next_retention = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_retention:
                sweep(store, settings, storage)
                next_retention = time.monotonic() + SWEEP_INTERVAL_SECONDS
            sweep_stalled_workers(store, settings)
            stop.wait(stalled_every)

    thread = threading.Thread(target=run, name="imagegate-housekeeping", daemon=True)
    thread.start()
    return thread, stop
