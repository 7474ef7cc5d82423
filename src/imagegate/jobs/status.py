"""The closed set of job statuses, and which of them end a job."""

from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the request's fault (bad input): charged, as the seeds say
    ERROR = "ERROR"  # imagegate's fault: not charged
    CANCELED = "CANCELED"  # canceled by the client: not charged

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def charged(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.CANCELED})


class LedgerKind(str, enum.Enum):
    TOPUP = "topup"
    HOLD = "hold"  # price held at submit (negative)
    CAPTURE = "capture"  # the hold becomes a charge (zero: the money already left at hold)
    RELEASE = "release"  # the hold is given back (positive)
