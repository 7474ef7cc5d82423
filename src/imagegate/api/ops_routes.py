"""What operators and orchestrators ask: ``GET /readyz`` and ``GET /metrics`` (``/healthz``, the
liveness probe, lives with the other routes), and the middleware that counts requests."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from imagegate.api.services import Services
from imagegate.telemetry.metrics import CONTENT_TYPE, UNMATCHED_ROUTE, record_request, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Not in the OpenAPI document: they describe the deployment, not the API clients call.
router = APIRouter(tags=["ops"], include_in_schema=False)
# Attached with RequestMetrics unless metrics_enabled is off.
metrics_router = APIRouter(tags=["ops"], include_in_schema=False)


@router.get("/readyz", summary="Readiness")
def readyz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    report = services.readiness.report()
    return JSONResponse(report.model_dump(exclude_none=True), status_code=200 if report.ready else 503)


@metrics_router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(render(services.cluster_metrics), media_type=CONTENT_TYPE)


class RequestMetrics:
    """Counts every answered request by route template and status code, a pure ASGI middleware
    (no response buffering, streaming untouched).

    The router leaves the route it matched in the scope; its path template
    (``/v2/requests/status/{request_id}``) is the label, never the raw path.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before starting a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            record_request(getattr(route, "path", UNMATCHED_ROUTE), status)
