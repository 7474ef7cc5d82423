"""The one place where exceptions become HTTP responses, in the shape of each protocol.

Which shape answers a request is decided once, from its path (:func:`error_style`): the queue
protocol's ``{"error", "message", "field"?}``, the dojo protocol's and the admin API's
``{"error": {"code", "message"}}``, or OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. Exception handlers and the body-limit middleware (which answers before any route
runs) all go through :func:`error_response` or :func:`plain_error`.
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

from imagegate.api.responses import answer
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
from imagegate.protocol.models import DojoError, DojoErrorDetail, QueueError
from imagegate.protocol.openai import PREFIX as OPENAI_PREFIX
from imagegate.protocol.views import openai_error

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

# The dojo protocol's code (and status, where it differs) for each exception.
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

# OpenAI's error `type` and `code` for each exception (a subclass not listed takes its nearest
# base's); the status is STATUS_CODES', except an unknown model, which OpenAI answers 404.
OPENAI_CODES: dict[type[RequestError], tuple[str, str | None]] = {
    RequestError: ("invalid_request_error", None),
    AuthenticationError: ("invalid_request_error", "invalid_api_key"),
    KeyDisabledError: ("invalid_request_error", "invalid_api_key"),
    InsufficientBalanceError: ("insufficient_quota", "insufficient_quota"),
    ModelNotFoundError: ("invalid_request_error", "model_not_found"),
    RateLimitedError: ("requests", "rate_limit_exceeded"),
    RequestNotFoundError: ("invalid_request_error", "not_found"),
    PayloadTooLargeError: ("invalid_request_error", "payload_too_large"),
    SyncTimeoutError: ("server_error", "timeout"),
}

# The admin API's code for each status (its body has the dojo protocol's shape).
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
    QUEUE = "queue"
    DOJO = "dojo"
    ADMIN = "admin"
    OPENAI = "openai"


def error_style(path: str) -> ErrorStyle:
    """The protocol whose error shape answers a request for ``path``."""
    if path.startswith("/api/v1/"):
        return ErrorStyle.DOJO
    if path.startswith("/admin/"):
        return ErrorStyle.ADMIN
    if path.startswith(OPENAI_PREFIX):
        return ErrorStyle.OPENAI
    return ErrorStyle.QUEUE


def status_code_for(exc: RequestError) -> int:
    return _nearest(STATUS_CODES, exc)


def _nearest(table: dict[type[RequestError], Any], exc: RequestError) -> Any:
    return next(table[cls] for cls in type(exc).__mro__ if cls in table)


def _coded(code: str, message: str, status_code: int, headers: dict[str, str] | None) -> JSONResponse:
    return answer(DojoError(error=DojoErrorDetail(code=code, message=message)), status_code, headers)


def plain_error(path: str, status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error that is no RequestError (an unknown route, the database away, a bug), in the
    shape of the protocol ``path`` speaks."""
    style = error_style(path)
    if style is ErrorStyle.OPENAI:
        return answer(openai_error(message, status_code), status_code, headers)
    if style is ErrorStyle.ADMIN:
        return _coded(ADMIN_CODES.get(status_code, "error"), message, status_code, headers)
    if style is ErrorStyle.DOJO:
        code = "not_found" if status_code == 404 else "internal_error" if status_code >= 500 else "invalid_request"
        return _coded(code, message, status_code, headers)
    return answer(QueueError(error=TITLES.get(status_code, "Error"), message=message), status_code, headers)


def error_response(request: Request, exc: RequestError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    status_code = status_code_for(exc)
    style = error_style(request.url.path)
    if style is ErrorStyle.OPENAI:
        kind, code = _nearest(OPENAI_CODES, exc)
        param = exc.field if isinstance(exc, ValidationError) else "model" if isinstance(exc, ModelNotFoundError) else None
        if isinstance(exc, ModelNotFoundError):
            status_code = 404
        return answer(openai_error(exc.message, status_code, kind=kind, param=param, code=code), status_code, headers)
    if style is ErrorStyle.ADMIN:
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return _coded(ADMIN_CODES.get(status_code, "error"), exc.message, status_code, headers)
    if style is ErrorStyle.DOJO:
        code, status = DOJO_CODES.get(type(exc), ("invalid_request", status_code))
        message = exc.message
        if isinstance(exc, InsufficientBalanceError):
            from imagegate.billing.pricing import to_credits

            message = f"Not enough credits. Required: {to_credits(exc.required_micros)}"
        return _coded(code, message, status, headers)
    if isinstance(exc, ValidationError):
        body = QueueError(error=exc.message, message=exc.message, field=exc.field)
    elif isinstance(exc, ModelNotFoundError):
        body = QueueError(error="Model not found", message=exc.message)
    else:
        body = QueueError(error=TITLES.get(status_code, "Error"), message=exc.message)
    return answer(body, status_code, headers)


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
        return plain_error(request.url.path, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # A database restart or failover: nothing was committed, so the client may simply retry
        # (with its Idempotency-Key, to be safe).
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return plain_error(request.url.path, 503, "The database is unavailable; retry shortly", {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return plain_error(request.url.path, 500, "Internal server error")
