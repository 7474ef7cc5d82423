"""What the routes share: settings, the store, storage, auth, limits and model switches."""

from __future__ import annotations

import threading
import time
from typing import Any
from dataclasses import dataclass, field

from imagegate.api.auth import Authenticator
from imagegate.api.waiting import JobWaiter
from imagegate.billing.pricing import price_for
from imagegate.catalog import MODELS, ModelSpec
from imagegate.config import Settings
from imagegate.exceptions import ModelNotFoundError
from imagegate.jobs.admin_tokens import StoredAdminToken
from imagegate.jobs.keys import RateLimit
from imagegate.jobs.store import JobStore
from imagegate.jobs.switches import ModelSwitch
from imagegate.jobs.wakeups import Topic
from imagegate.media.storage import Storage
from imagegate.telemetry.health import Readiness
from imagegate.telemetry.metrics import ClusterCollector

SWITCH_CACHE_SECONDS = 1.0
NO_SWITCH = ModelSwitch()


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Storage
    auth: Authenticator
    rate_limit: RateLimit
    waiter: JobWaiter
    readiness: Readiness
    cluster_metrics: ClusterCollector
    _switches: tuple[float, dict[str, ModelSwitch]] = (0.0, {})
    _admin_token: tuple[float, StoredAdminToken | None] = (0.0, None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings, store: JobStore) -> "Services":
        from imagegate.media.storage import storage_for

        services = cls(
            settings=settings,
            store=store,
            storage=storage_for(settings),
            auth=Authenticator(store),
            rate_limit=RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst),
            waiter=JobWaiter(store),
            readiness=Readiness(settings, store),
            cluster_metrics=ClusterCollector(store, settings.lease_seconds),
        )
        store.wakeups.subscribe(services._on_wakeup)
        return services

    def _on_wakeup(self, topic: str, _value: str) -> None:
        # An operator switched a model somewhere: read the switches again on the next request.
        if topic in (Topic.MODELS, Topic.ANY):
            self._switches = (0.0, {})

    def close(self) -> None:
        self.waiter.close()
        self.auth.close()

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def model_switch(self, model_id: str) -> ModelSwitch:
        """The operator's runtime switch of the model (cached for SWITCH_CACHE_SECONDS)."""
        now = time.monotonic()
        expires, switches = self._switches
        if expires < now:
            switches = self.store.models.states()
            self._switches = (now + SWITCH_CACHE_SECONDS, switches)
        return switches.get(model_id, NO_SWITCH)

    def model_enabled(self, model_id: str) -> bool:
        if not self.settings.model(model_id).enabled:
            return False
        return self.model_switch(model_id).enabled

    def price(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        """What a request costs now: the operator's runtime price wins over the config's and the
        catalog's."""
        return price_for(spec, params, self.settings, self.model_switch(spec.id).price_micros)

    def stored_admin_token(self) -> StoredAdminToken | None:
        """The token `imagegate admin token --rotate` stored (cached like the switches, so a
        rotation reaches every API process within a second)."""
        now = time.monotonic()
        expires, token = self._admin_token
        if expires < now:
            token = self.store.admin_tokens.current()
            self._admin_token = (now + SWITCH_CACHE_SECONDS, token)
        return token

    def enabled_model(self, model_id: str, public_id: str | None = None) -> ModelSpec:
        spec = MODELS.get(model_id)
        if spec is None or not self.model_enabled(model_id):
            raise ModelNotFoundError(public_id or model_id)
        return spec
