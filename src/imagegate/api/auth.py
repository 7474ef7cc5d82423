"""API keys from the header each protocol uses, with a short cache so polls stay cheap."""

from __future__ import annotations

import threading
import time

from fastapi import Request

from imagegate.catalog import Auth
from imagegate.exceptions import AuthenticationError
from imagegate.jobs.store import ApiKey, JobStore
from imagegate.jobs.wakeups import Topic

# A disabled or topped-up key is seen at once (its change is announced); without the
# announcement, within this many seconds.
CACHE_SECONDS = 1.0


def key_from_headers(request: Request, auth: Auth | None) -> str | None:
    """The key in the route's header; `None` auth accepts any of the three (shared endpoints)."""
    headers = request.headers
    if auth in (None, Auth.SUBSCRIPTION) and headers.get("ocp-apim-subscription-key"):
        return headers["ocp-apim-subscription-key"]
    if auth in (None, Auth.SECRET) and headers.get("x-secret-key"):
        return headers["x-secret-key"]
    if auth in (None, Auth.BEARER):
        value = headers.get("authorization", "")
        if value[:7].lower() == "bearer ":
            return value[7:].strip()
    return None


class Authenticator:
    """Keys from their header, cached for CACHE_SECONDS; a change to a key (disabled, topped up)
    announced by any process drops it from every process's cache at once."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()
        self._unsubscribe = store.wakeups.subscribe(self._on_wakeup)

    def _on_wakeup(self, topic: str, value: str) -> None:
        if topic == Topic.KEY:
            with self._lock:
                for plaintext in [p for p, (_, key) in self._cache.items() if key.id == value]:
                    del self._cache[plaintext]
        elif topic == Topic.ANY:
            self.forget()

    def close(self) -> None:
        self._unsubscribe()

    def __call__(self, request: Request, auth: Auth | None = None) -> ApiKey:
        plaintext = key_from_headers(request, auth)
        if not plaintext:
            header = auth.value if auth else "Ocp-Apim-Subscription-Key, X-Secret-Key or Authorization: Bearer"
            raise AuthenticationError(f"Missing API key: send it in the {header} header")
        now = time.monotonic()
        hit = self._cache.get(plaintext)
        if hit and hit[0] > now:
            return hit[1]
        key = self.store.keys.authenticate(plaintext)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[plaintext] = (now + CACHE_SECONDS, key)
        return key

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()
