"""What routes send: protocol bodies as JSON, and Server-Sent Event streams."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from imagegate.protocol.models import Body


def answer(body: Body, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.content(), status_code=status_code, headers=headers)


def error_responses(model: type[Body], errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: each status with its description, in ``model``'s shape."""
    return {status: {"model": model, "description": text} for status, text in errors.items()}


def sse(event: str, data: Body) -> bytes:
    """One Server-Sent Event: its name and its body as one line of JSON."""
    return f"event: {event}\ndata: {data.model_dump_json()}\n\n".encode()


SSE_KEEPALIVE = b": keep-alive\n\n"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` that stops its producer as soon as the client goes away.

    Starlette notices a departed client only at the next write when the server speaks ASGI 2.4;
    a stream that waits between events would go on polling for nobody until then. This one
    always listens for the disconnect and cancels the producer at once.
    """

    media_type = "text/event-stream"

    def __init__(self, content: Any, headers: dict[str, str] | None = None) -> None:
        # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def produce() -> None:
                await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(produce)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
