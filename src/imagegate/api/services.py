"""What the routes share: settings, the store, storage, auth, limits and model switches."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from imagegate.api.auth import Authenticator
from imagegate.api.ratelimit import RateLimiter
from imagegate.api.waiting import JobWaiter
from imagegate.catalog import MODELS, ModelSpec
from imagegate.config import Settings
from imagegate.exceptions import ModelNotFoundError
from imagegate.jobs.store import JobStore
from imagegate.telemetry.health import Readiness
from imagegate.telemetry.metrics import ClusterCollector

SWITCH_CACHE_SECONDS = 1.0


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Any
    auth: Authenticator
    limiter: RateLimiter
    waiter: JobWaiter
    readiness: Readiness
    cluster_metrics: ClusterCollector
    _switches: tuple[float, dict[str, bool]] = (0.0, {})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings, store: JobStore) -> "Services":
        from imagegate.media.storage import open_storage

        return cls(
            settings=settings,
            store=store,
            storage=open_storage(settings.resolved_storage_url),
            auth=Authenticator(store),
            limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
            waiter=JobWaiter(store),
            readiness=Readiness(settings, store),
            cluster_metrics=ClusterCollector(store, settings.lease_seconds),
        )

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def model_enabled(self, model_id: str) -> bool:
        if not self.settings.model(model_id).enabled:
            return False
        now = time.monotonic()
        expires, switches = self._switches
        if expires < now:
            switches = self.store.models.all()
            self._switches = (now + SWITCH_CACHE_SECONDS, switches)
        return switches.get(model_id, True)

    def enabled_model(self, model_id: str, public_id: str | None = None) -> ModelSpec:
        spec = MODELS.get(model_id)
        if spec is None or not self.model_enabled(model_id):
            raise ModelNotFoundError(public_id or model_id)
        return spec
