"""The one place where exceptions become HTTP responses, in the shape of each protocol."""

from __future__ import annotations

import logging

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


# The admin API's one error shape, {"error": {"code", "message"}}: its code for each status.
ADMIN_PREFIX = "/admin/"
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


def is_dojo(request: Request) -> bool:
    return request.url.path.startswith("/api/v1/")


def is_admin(request: Request) -> bool:
    return request.url.path.startswith(ADMIN_PREFIX)


def coded_error(code: str, message: str, status_code: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The nested shape the dojo protocol and the admin API share."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code, headers=headers)


def admin_error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return coded_error(ADMIN_CODES.get(status_code, "error"), message, status_code, headers)


def error_response(request: Request, exc: RequestError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    status_code = status_code_for(exc)
    if is_admin(request):
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return admin_error(status_code, exc.message, headers)
    if is_dojo(request):
        code, status = DOJO_CODES.get(type(exc), ("invalid_request", status_code))
        if isinstance(exc, InsufficientBalanceError):
            from imagegate.billing.pricing import to_credits

            message = f"Not enough credits. Required: {to_credits(exc.required_micros)}"
        else:
            message = exc.message
        return coded_error(code, message, status, headers)
    if isinstance(exc, ValidationError):
        body = {"error": exc.message, "message": exc.message, "field": exc.field}
    elif isinstance(exc, ModelNotFoundError):
        body = {"error": "Model not found", "message": exc.message}
    else:
        body = {"error": TITLES.get(status_code, "Error"), "message": exc.message}
    return JSONResponse(body, status_code=status_code, headers=headers)


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
        if is_admin(request):
            return admin_error(exc.status_code, str(exc.detail), exc.headers)
        if is_dojo(request):
            code = "not_found" if exc.status_code == 404 else "invalid_request"
            return coded_error(code, str(exc.detail), exc.status_code)
        return JSONResponse(
            {"error": TITLES.get(exc.status_code, "Error"), "message": str(exc.detail)}, status_code=exc.status_code
        )

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # A database restart or failover: nothing was committed, so the client may simply retry
        # (with its Idempotency-Key, to be safe).
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        headers = {"Retry-After": "2"}
        message = "The database is unavailable; retry shortly"
        if is_admin(request):
            return admin_error(503, message, headers)
        if is_dojo(request):
            return coded_error("internal_error", message, 503, headers)
        return JSONResponse({"error": "Service Unavailable", "message": message}, status_code=503, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if is_admin(request):
            return admin_error(500, "Internal server error")
        if is_dojo(request):
            return coded_error("internal_error", "Internal server error", 500)
        return JSONResponse({"error": "Internal Server Error", "message": "Internal server error"}, status_code=500)
