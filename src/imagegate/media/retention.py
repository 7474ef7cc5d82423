"""Output media retention: the media of completed jobs are deleted ``media_retention_days`` after
the job completed (0, the default, keeps them). The job keeps its record and output description;
its media URLs answer 404 from then on, like a hosted API's expired result URLs.

``imagegate serve`` runs :func:`purge_expired_media` hourly (:mod:`imagegate.runtime.housekeeping`).
"""

from __future__ import annotations

import logging
import time

from imagegate.exceptions import StorageError
from imagegate.jobs.store import JobStore
from imagegate.media.storage import Storage

log = logging.getLogger("imagegate.retention")


def purge_expired_media(store: JobStore, storage: Storage, retention_days: float, now: float | None = None) -> int:
    """Delete the media of jobs completed more than ``retention_days`` ago; returns how many jobs.

    A job is marked only once all of its media are gone, so a storage failure leaves it for the
    next sweep (deleting a key that is already gone is not a failure).
    """
    if retention_days <= 0:
        return 0
    before = (time.time() if now is None else now) - retention_days * 86400.0
    purged = 0
    while batch := store.jobs.with_expired_media(before):
        done = []
        for job_id, keys in batch:
            try:
                for key in keys:
                    storage.delete(key)
            except StorageError as exc:
                log.warning("job %s: media not deleted yet (%s)", job_id, exc)
                continue
            done.append(job_id)
        store.jobs.mark_media_deleted(done)
        purged += len(done)
        if len(done) < len(batch):
            break  # the rest failed: try again at the next sweep rather than spin on them
    return purged
