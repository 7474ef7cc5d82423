"""When a call is tried again, and after how long.

Retried: connection failures, ``429 Too Many Requests`` and ``503 Service Unavailable`` — the
answers imagegate gives when nothing was done (a refused rate-limit token costs nothing; a 503 means
the database was unreachable and nothing was committed). Waits grow exponentially with jitter, so
many clients refused at once do not come back at once, and never undercut the server's
``Retry-After``.

A request is sent again only when doing it twice cannot do it twice: reads and cancels always, and
submissions because the client gives every one an ``Idempotency-Key`` (the server answers a repeat
with the original request). Anything else (an upload) is retried only when the failure shows it
never reached the server.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})

# Failures that happen before a byte of the request left: safe to repeat any request.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# The server is reachable but slow: sending the request again would only double the wait.
NEVER_RETRIED_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ReadTimeout,)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` tries after the first; the n-th waits ``base_delay * 2**n`` capped at
    ``max_delay``, drawn uniformly from its upper half, and at least the server's ``Retry-After``.
    A ``Retry-After`` above ``max_retry_after`` is not waited for: the error is raised at once."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based), or None to give up."""
        if attempt >= self.max_retries:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)


NO_RETRIES = RetryPolicy(max_retries=0)


def retryable_error(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    if isinstance(exc, NEVER_RETRIED_ERRORS):
        return False
    return idempotent or isinstance(exc, NOT_SENT_ERRORS)


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
