"""The application factory. Importing this module starts nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagegate import __version__
from imagegate.api import errors
from imagegate.api.body_limit import BodyLimitMiddleware
from imagegate.api.routes import add_model_routes, router
from imagegate.api.services import Services
from imagegate.config import Settings
from imagegate.jobs.store import JobStore


SETTINGS_ENV = "IMAGEGATE_SERVE_SETTINGS_JSON"


def create_app_from_environment() -> FastAPI:
    """The factory each extra API process of ``imagegate serve`` runs (uvicorn ``factory=True``):
    the parent passes its resolved settings in the environment."""
    import os

    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))


def create_app(settings: Settings, *, store: JobStore | None = None) -> FastAPI:
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal store
        if store is None:
            store = JobStore.from_settings(settings)
            store.migrate()
        app.state.services = Services.create(settings, store)
        try:
            yield
        finally:
            if own_store:
                store.dispose()

    app = FastAPI(
        title="imagegate",
        version=__version__,
        description="Self-hosted image generation and editing API, compatible with the hosted gateway protocols.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    schemas: dict[str, Any] = {}
    add_model_routes(app, schemas)
    app.include_router(router)
    from imagegate.api.webhook_routes import router as webhook_router

    app.include_router(webhook_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        spec["components"]["securitySchemes"] = {
            "subscriptionKey": {"type": "apiKey", "in": "header", "name": "Ocp-Apim-Subscription-Key"},
            "secretKey": {"type": "apiKey", "in": "header", "name": "X-Secret-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
