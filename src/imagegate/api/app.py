"""The application factory. Importing this module starts nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagegate import __version__
from imagegate.api import errors, ops_routes
from imagegate.api.routes import add_model_routes, router
from imagegate.api.services import Services
from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.telemetry.logs import configure_logging


SETTINGS_ENV = "IMAGEGATE_SERVE_SETTINGS_JSON"


def create_app_from_environment() -> FastAPI:
    """The factory each extra API process of ``imagegate serve`` runs (uvicorn ``factory=True``):
    the parent passes its resolved settings in the environment."""
    import os

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log_format)
    return create_app(settings)


def create_app(settings: Settings, *, store: JobStore | None = None) -> FastAPI:
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal store
        if store is None:
            store = JobStore.from_settings(settings)
            store.migrate()
        app.state.services = services = Services.create(settings, store)
        try:
            yield
        finally:
            services.close()
            if own_store:
                store.dispose()

    app = FastAPI(
        title="imagegate",
        version=__version__,
        description="Self-hosted image generation and editing API, compatible with the hosted gateway protocols.",
        lifespan=lifespan,
    )
    errors.install(app)
    schemas: dict[str, Any] = {}
    add_model_routes(app, schemas)
    app.include_router(router)
    from imagegate.api.webhook_routes import router as webhook_router

    app.include_router(webhook_router)
    app.include_router(ops_routes.router)
    if settings.metrics_enabled:
        app.include_router(ops_routes.metrics_router)
        app.add_middleware(ops_routes.RequestMetrics)
    from imagegate.api.admin import router as admin_router

    app.include_router(admin_router)
    from imagegate.api.console import router as console_router

    app.include_router(console_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        # Invalid input answers 400 in each protocol's shape (api/errors.py), never FastAPI's 422.
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        if spec["components"]["schemas"].pop("HTTPValidationError", None) is not None:
            spec["components"]["schemas"].pop("ValidationError", None)  # FastAPI's, which only 422 used
        # update, not replace: routers declare their own schemes (the admin token's).
        spec["components"].setdefault("securitySchemes", {}).update(
            {
                "subscriptionKey": {"type": "apiKey", "in": "header", "name": "Ocp-Apim-Subscription-Key"},
                "secretKey": {"type": "apiKey", "in": "header", "name": "X-Secret-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
