"""Housekeeping in ``imagegate serve``: one background thread that, at start and then hourly,
deletes what has outlived its retention: finished webhook deliveries (``webhook_retention_days``)
and the output media of completed jobs (``media_retention_days``). Each sweep lives with what it
cleans (:meth:`~imagegate.webhooks.outbox.WebhookOutbox.purge_expired`,
:func:`~imagegate.media.retention.purge_expired_media`); this module only runs them.
"""

from __future__ import annotations

import logging
import threading

from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.media.retention import purge_expired_media
from imagegate.media.storage import Storage, storage_for
from imagegate.webhooks.outbox import WebhookOutbox

log = logging.getLogger("imagegate.housekeeping")

SWEEP_INTERVAL_SECONDS = 3600.0


def sweep(store: JobStore, settings: Settings, storage: Storage, now: float | None = None) -> dict[str, int]:
    """Run every retention sweep once; returns how much each deleted. A failing sweep (the
    database restarting, the storage unreachable) is logged and waits for the next round."""
    counts: dict[str, int] = {}
    sweeps = {
        "webhook deliveries": lambda: WebhookOutbox(store, settings).purge_expired(settings.webhook_retention_days, now),
        "jobs' media": lambda: purge_expired_media(store, storage, settings.media_retention_days, now),
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


def start_housekeeping_thread(store: JobStore, settings: Settings) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    storage = storage_for(settings)

    def run() -> None:
        while not stop.is_set():
            sweep(store, settings, storage)
            stop.wait(SWEEP_INTERVAL_SECONDS)

    thread = threading.Thread(target=run, name="imagegate-housekeeping", daemon=True)
    thread.start()
    return thread, stop
