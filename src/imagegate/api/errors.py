"""The one place where exceptions become HTTP responses, in the shape of each protocol."""

from __future__ import annotations

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

# OpenAI's error `type` and `code` for each exception (a subclass not listed takes its nearest
# base's); the status is the table's above, except an unknown model, which OpenAI answers 404.
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


def is_dojo(request: Request) -> bool:
    return request.url.path.startswith("/api/v1/")


def is_openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PREFIX)


def _nearest(table: dict[type[RequestError], Any], exc: RequestError) -> Any:
    return next(table[cls] for cls in type(exc).__mro__ if cls in table)


def plain_error(request: Request, status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error that is no RequestError (an unknown route, the database away, a bug), in the
    shape of the protocol the request speaks."""
    if is_openai(request):
        return answer(openai_error(message, status_code), status_code, headers)
    if is_dojo(request):
        code = "not_found" if status_code == 404 else "internal_error" if status_code >= 500 else "invalid_request"
        return answer(DojoError(error=DojoErrorDetail(code=code, message=message)), status_code, headers)
    return answer(QueueError(error=TITLES.get(status_code, "Error"), message=message), status_code, headers)


def error_response(request: Request, exc: RequestError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    status_code = status_code_for(exc)
    if is_openai(request):
        kind, code = _nearest(OPENAI_CODES, exc)
        param = exc.field if isinstance(exc, ValidationError) else "model" if isinstance(exc, ModelNotFoundError) else None
        if isinstance(exc, ModelNotFoundError):
            status_code = 404
        return answer(openai_error(exc.message, status_code, kind=kind, param=param, code=code), status_code, headers)
    if is_dojo(request):
        code, status = DOJO_CODES.get(type(exc), ("invalid_request", status_code))
        if isinstance(exc, InsufficientBalanceError):
            from imagegate.billing.pricing import to_credits

            message = f"Not enough credits. Required: {to_credits(exc.required_micros)}"
        else:
            message = exc.message
        return answer(DojoError(error=DojoErrorDetail(code=code, message=message)), status, headers)
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
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")) or "body"
        return error_response(request, ValidationError(field, str(first.get("msg", "is invalid")).lower()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return plain_error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # A database restart or failover: nothing was committed, so the client may simply retry
        # (with its Idempotency-Key, to be safe).
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return plain_error(request, 503, "The database is unavailable; retry shortly", {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return plain_error(request, 500, "Internal server error")
