"""The application factory. Importing this module starts nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagegate import __version__
from imagegate.api import catalog, errors, events, files, history, openai, webhook_routes
from imagegate.api.routes import add_model_routes, register_schema, router
from imagegate.api.services import Services
from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.protocol.models import ProgressEvent, QueueStatus


SETTINGS_ENV = "IMAGEGATE_SERVE_SETTINGS_JSON"


def create_app_from_environment() -> FastAPI:
    """The factory each extra API process of ``imagegate serve`` runs (uvicorn ``factory=True``):
    the parent passes its resolved settings in the environment."""
    import os

    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))


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
    schemas: dict[str, Any] = {}
    add_model_routes(app, schemas)
    app.include_router(router)
    for module in (webhook_routes, catalog, history, events, files, openai):
        app.include_router(module.router)
    # Bodies the routes read or stream themselves, which FastAPI cannot see.
    for model in (*openai.REQUEST_SCHEMAS, ProgressEvent, QueueStatus):
        register_schema(schemas, model)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _only_real_responses(spec)
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
