"""Per-key token buckets for submitting requests (polls are cheap and not limited)."""

from __future__ import annotations

import threading
import time

from imagegate.exceptions import RateLimitedError


class RateLimiter:
    def __init__(self, per_second: float, burst: int) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise RateLimitedError((1.0 - tokens) / self.rate)
            self._buckets[key_id] = (tokens - 1.0, now)
