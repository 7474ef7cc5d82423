"""The one place where exceptions become HTTP responses, in the shape of each protocol.

Which shape a response takes is decided by :func:`error_style` from the request's path, once;
:func:`error_json` renders any error in that shape. Handlers and middleware (the body limit
answers before a route runs) go through both.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegate.exceptions import (
    AuthenticationError,
    ConflictError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    KeyDisabledError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestError,
    RequestNotFoundError,
    SyncTimeoutError,
    UnsupportedMediaTypeError,
    ValidationError,
)

log = logging.getLogger("imagegate.api")

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Insufficient Balance",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    503: "Service Unavailable",
    500: "Internal Server Error",
    504: "Gateway Timeout",
}

# The one table from exception to HTTP status; a subclass not listed takes its nearest base's.
STATUS_CODES: dict[type[RequestError], int] = {
    RequestError: 400,
    ValidationError: 400,
    UnsupportedMediaTypeError: 415,
    PayloadTooLargeError: 413,
    AuthenticationError: 401,
    KeyDisabledError: 403,
    ModelNotFoundError: 400,
    InsufficientBalanceError: 402,
    RateLimitedError: 429,
    RequestNotFoundError: 404,
    ConflictError: 409,
    SyncTimeoutError: 504,
}


def status_code_for(exc: RequestError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]  # type: ignore[index]
    return 400


DOJO_CODES = {
    AuthenticationError: ("unauthorized", 401),
    KeyDisabledError: ("unauthorized", 403),
    InsufficientBalanceError: ("insufficient_credits", 402),
    ValidationError: ("invalid_request", 400),
    ModelNotFoundError: ("model_not_found", 404),
    RateLimitedError: ("rate_limited", 429),
    RequestNotFoundError: ("not_found", 404),
    IdempotencyConflictError: ("invalid_request", 409),
    SyncTimeoutError: ("internal_error", 504),
}


# The admin API's code for each status (its shape is the dojo protocol's).
ADMIN_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ErrorStyle(enum.Enum):
    QUEUE = "queue"  # {"error": <title or message>, "message": ..., "field"?}
    DOJO = "dojo"  # {"error": {"code", "message"}}
    ADMIN = "admin"  # {"error": {"code", "message"}}, codes by status (ADMIN_CODES)
    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}}


def error_style(path: str) -> ErrorStyle:
    """The protocol whose error shape answers a request for ``path``."""
    if path.startswith("/api/v1/"):
        return ErrorStyle.DOJO
    if path.startswith("/admin/"):
        return ErrorStyle.ADMIN
    if path.startswith("/v1/"):
        return ErrorStyle.OPENAI
    return ErrorStyle.QUEUE


def error_json(
    path: str,
    status_code: int,
    message: str,
    *,
    code: str,
    error: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape of the protocol that ``path`` belongs to. ``code`` is the
    machine-readable code (dojo, OpenAI); ``error`` the queue style's ``error`` text (the
    status's title unless given); ``field`` the offending field, where there is one."""
    style = error_style(path)
    body: dict[str, Any]
    if style is ErrorStyle.DOJO:
        body = {"error": {"code": code, "message": message}}
    elif style is ErrorStyle.ADMIN:
        body = {"error": {"code": ADMIN_CODES.get(status_code, "error"), "message": message}}
    elif style is ErrorStyle.OPENAI:
        kind = "server_error" if status_code >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "param": field, "code": code}}
    else:
        body = {"error": error or TITLES.get(status_code, "Error"), "message": message}
        if field is not None:
            body["field"] = field
    return JSONResponse(body, status_code=status_code, headers=headers)


def error_response(request: Request, exc: RequestError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    path = request.url.path
    status_code = status_code_for(exc)
    if error_style(path) is ErrorStyle.ADMIN and isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    code, dojo_status = DOJO_CODES.get(type(exc), ("invalid_request", status_code))
    if error_style(path) is ErrorStyle.DOJO:
        status_code = dojo_status
        if isinstance(exc, InsufficientBalanceError):
            from imagegate.billing.pricing import to_credits

            message = f"Not enough credits. Required: {to_credits(exc.required_micros)}"
            return error_json(path, status_code, message, code=code, headers=headers)
    if isinstance(exc, ValidationError):
        return error_json(path, status_code, exc.message, code=code, error=exc.message, field=exc.field, headers=headers)
    error = "Model not found" if isinstance(exc, ModelNotFoundError) else None
    return error_json(path, status_code, exc.message, code=code, error=error, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _fastapi_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "is invalid"}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            return error_response(request, ValidationError("body", "must be valid JSON"))
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")) or "body"
        message = str(first.get("msg", "is invalid"))
        # Lower-case only the first letter: a rule may name things ("US dollars").
        return error_response(request, ValidationError(field, message[:1].lower() + message[1:]))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        return error_json(request.url.path, exc.status_code, str(exc.detail), code=code, headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # A database restart or failover: nothing was committed, so the client may simply retry
        # (with its Idempotency-Key, to be safe).
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        message = "The database is unavailable; retry shortly"
        return error_json(request.url.path, 503, message, code="internal_error", headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_json(request.url.path, 500, "Internal server error", code="internal_error")
