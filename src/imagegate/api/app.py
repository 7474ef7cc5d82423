"""The application factory. Importing this module starts nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagegate import __version__
from imagegate.api import catalog, console, errors, events, files, history, openai, ops_routes, webhook_routes
from imagegate.api.body_limit import BodyLimitMiddleware
from imagegate.api.routes import add_model_routes, register_schema, router
from imagegate.api.services import Services
from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.protocol.models import ProgressEvent, QueueStatus
from imagegate.telemetry.logs import configure_logging


SETTINGS_ENV = "IMAGEGATE_SERVE_SETTINGS_JSON"


def create_app_from_environment() -> FastAPI:
    """The factory each extra API process of ``imagegate serve`` runs (uvicorn ``factory=True``):
    the parent passes its resolved settings in the environment."""
    import os

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log_format)
    return create_app(settings)


def _only_real_responses(spec: dict[str, Any]) -> None:
    """Drop what FastAPI documents on its own but imagegate never sends: 422 (bad parameters
    answer 400 in the protocol's error shape, documented per route) and an empty JSON body beside
    the one content type a route really sends (media, event streams)."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                content = response.get("content", {})
                if len(content) > 1 and content.get("application/json") == {"schema": {}}:
                    del content["application/json"]
    schemas = spec.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def create_app(settings: Settings, *, store: JobStore | None = None) -> FastAPI:
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal store
        if store is None:
            store = JobStore.from_settings(settings)
            store.migrate()
            if settings.metrics_enabled:
                from imagegate.telemetry.metrics import count_statements

                count_statements(store, "api")
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
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    schemas: dict[str, Any] = {}
    add_model_routes(app, schemas)
    app.include_router(router)
    for module in (webhook_routes, catalog, history, events, files, openai, console):
        app.include_router(module.router)
    # Bodies the routes read or stream themselves, which FastAPI cannot see.
    for model in (*openai.REQUEST_SCHEMAS, ProgressEvent, QueueStatus):
        register_schema(schemas, model)
    app.include_router(ops_routes.router)
    if settings.metrics_enabled:
        app.include_router(ops_routes.metrics_router)
        app.add_middleware(ops_routes.RequestMetrics)
    from imagegate.api.admin import router as admin_router

    app.include_router(admin_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _only_real_responses(spec)
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
