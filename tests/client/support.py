"""What the client's tests share: routes of the tiny server, request bodies, and a transport that
records what crossed the wire."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from faults.support import FAST
from faults.support import FLUX_DEV_PRICE as FLUX_DEV_MICROS

from imagegate_client import CatalogRoute, Protocol, RetryPolicy

SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = CatalogRoute("POST", "/flux-dev/v1/dev/textToImage", Protocol.QUEUE, SUB)
FLUX_DEV_I2I = CatalogRoute("POST", "/flux-dev/v1/dev/imageToImage", Protocol.QUEUE, SUB)
KLEIN = CatalogRoute("POST", "/flux-2-klein-4b/v1/generateImage", Protocol.SYNC_OUTPUT, SUB)
FLUX_DEV_PRICE = Decimal(FLUX_DEV_MICROS) / 1_000_000

# Long enough to be seen running (and canceled) on the tiny model: a few seconds.
SLOW: dict[str, Any] = {**FAST, "num_inference_steps": 16, "image_size": {"width": 192, "height": 192}}
KLEIN_BODY: dict[str, Any] = {"prompt": "a dog on a beach", "steps": 1, "width": 512, "height": 512}
# Quick retries, so the tests wait for the server, not for the backoff.
QUICK = RetryPolicy(max_retries=8, base_delay=0.1, max_delay=1.0)


@dataclass
class Exchange:
    method: str
    path: str
    headers: httpx.Headers
    status: int | None  # None: the transport failed
    error: str | None


class RecordingTransport(httpx.BaseTransport):
    """httpx's own transport, noting each exchange: the requests are real and reach the server."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            self.exchanges.append(Exchange(request.method, request.url.path, request.headers, None, type(exc).__name__))
            raise
        self.exchanges.append(Exchange(request.method, request.url.path, request.headers, response.status_code, None))
        return response

    def close(self) -> None:
        self.inner.close()

    def to(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.path == path]
