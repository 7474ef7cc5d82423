"""The catalog, readable: ``GET /v2/models`` lists every enabled model with its routes, price rule
and request JSON schema — what forms and client libraries are built from."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imagegate.api.responses import answer, error_responses
from imagegate.api.services import Services
from imagegate.catalog import MODELS
from imagegate.protocol import views
from imagegate.protocol.models import Catalog, QueueError

router = APIRouter()


@router.get(
    "/v2/models",
    tags=["catalog"],
    summary="Every enabled model: id, title, task, routes, price rule and request schema",
    responses={200: {"model": Catalog}, **error_responses(QueueError, {401: "Missing or unknown key"})},
)
def list_models(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    services.auth(request)
    enabled = [spec for spec in MODELS.values() if services.model_enabled(spec.id)]
    entries = [views.catalog_entry_view(spec, services.settings, services.model_switch(spec.id).price_micros) for spec in enabled]
    return answer(Catalog(models=entries))
