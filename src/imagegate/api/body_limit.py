"""Request bodies are limited while they stream in, on every route, before any route reads them.

A declared ``Content-Length`` above the route's limit is answered 413 at once, without reading a
byte of the body; a chunked (or lying) body is counted as it arrives and reading stops at the
limit. Either way the process that hosts the API (and, under ``imagegate serve``, the worker
supervisor and the webhook deliverer) holds at most one limit's worth of body, never the body a
client chose to send. A pure ASGI middleware, so nothing buffers the body before it counts.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.api.errors import error_response
from imagegate.config import Settings
from imagegate.exceptions import PayloadTooLargeError
from imagegate.media.inputs import size_text

# JSON bodies: room for a few data: URIs of max_input_bytes-sized inputs (base64 adds a third).
MAX_BODY_BYTES = 40 * 1024 * 1024
# Uploads carry one input file; the margin is for the multipart boundaries, part headers and
# small form fields around it.
UPLOAD_PATH = "/v2/files"
MULTIPART_MARGIN_BYTES = 64 * 1024


def body_limit(path: str, settings: Settings) -> int:
    """The most body bytes a request for ``path`` may send."""
    if path == UPLOAD_PATH or path.startswith(UPLOAD_PATH + "/"):
        return settings.max_input_bytes + MULTIPART_MARGIN_BYTES
    return MAX_BODY_BYTES


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive``; caught again by the middleware around it."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"], self.settings)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, send, limit)
            return

        received = 0
        exceeded = False
        answered = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if exceeded:
                # Whatever the app made of the interrupted read (a framework may call it a bad
                # body), the answer is 413.
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await _refuse(scope, send, limit)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not answered:
            await _refuse(scope, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    exc = PayloadTooLargeError("body", f"must be at most {size_text(limit)} (this request's body is larger)")
    response = error_response(Request(scope), exc)
    # The rest of the body is never read: the connection cannot be reused for another request.
    response.headers["Connection"] = "close"
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
