"""The exceptions the client raises, all rooted at :class:`ImagegateError`.

Hierarchy::

    ImagegateError
    ├── APIError                     the server answered with an error status (after any retries)
    │   ├── BadRequestError          400: a field breaks a rule (``field`` names it; 415 too)
    │   ├── AuthenticationError      401: missing or unknown key
    │   ├── InsufficientBalanceError 402: the wallet cannot cover the price
    │   ├── PermissionDeniedError    403: the key is disabled
    │   ├── NotFoundError            404: no such request (or another key's)
    │   ├── ConflictError            409: an Idempotency-Key reused with another body
    │   ├── RateLimitError           429: still rate limited when the retries ran out
    │   └── ServerError              5xx
    │       └── ServiceUnavailableError  503: still unavailable when the retries ran out
    ├── APIConnectionError           the server could not be reached (after the retries)
    │   └── APITimeoutError          the server took longer to answer than the timeout allows
    ├── UnexpectedResponseError      an answer that is not what the API documents (a proxy's page, say)
    ├── ModelNotFoundError           the model is not in the server's catalog (unknown or disabled)
    ├── RequestFailedError           the request ended FAILED, ERROR or CANCELED
    ├── WaitTimeoutError             waiting for a request outlived the timeout (the request runs on)
    ├── NoRequestIdError             the model answered synchronously: there is no request to poll or cancel
    └── WebhookVerificationError     a webhook's headers, timestamp or signature are wrong
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagegate_client.models import QueueStatus, Status


class ImagegateError(Exception):
    """Root of every error the client raises."""


class APIError(ImagegateError):
    """The server answered with an error status. ``message`` is the server's own text; ``field``
    names the offending field when the server names one, ``code`` is the dojo protocol's error
    code where there is one, ``body`` the decoded answer."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        field: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}")
        self.message = message
        self.status_code = status_code
        self.field = field
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body


class BadRequestError(APIError):
    """400 (and 415): the request breaks a rule; ``field`` names the field."""


class AuthenticationError(APIError):
    """401: the key is missing or unknown."""


class InsufficientBalanceError(APIError):
    """402: the key's wallet cannot cover the request's price."""


class PermissionDeniedError(APIError):
    """403: the key is disabled."""


class NotFoundError(APIError):
    """404: no such request for this key."""


class ConflictError(APIError):
    """409: the Idempotency-Key was already used with a different body."""


class RateLimitError(APIError):
    """429: the key's rate limit held for longer than the client's retries."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailableError(ServerError):
    """503: the server's database was unreachable for longer than the client's retries."""


class APIConnectionError(ImagegateError):
    """The server could not be reached, or the connection broke, and retrying did not help."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the timeout."""


class UnexpectedResponseError(ImagegateError):
    """The server answered something the API does not document (not JSON, a missing field)."""


class ModelNotFoundError(ImagegateError):
    """The model is unknown or disabled: not in ``GET /v2/models``, or refused by the server."""

    def __init__(self, model_id: str, message: str | None = None) -> None:
        super().__init__(message or f"Model '{model_id}' not found or is disabled")
        self.model_id = model_id


class RequestFailedError(ImagegateError):
    """The request ended without a result: ``FAILED`` (the request's fault, charged), ``ERROR``
    (the server's fault, not charged) or ``CANCELED``. ``status`` is the final status object where
    the protocol gives one."""

    def __init__(self, request_id: str | None, state: Status, error: str | None, status: QueueStatus | None = None) -> None:
        super().__init__(f"{request_id or 'the request'} ended {state.value}: {error or 'no reason given'}")
        self.request_id = request_id
        self.state = state
        self.error = error
        self.status = status


class WaitTimeoutError(ImagegateError):
    """The request did not end within the timeout. It was not canceled: wait again, or cancel it."""

    def __init__(self, request_id: str | None, timeout: float) -> None:
        super().__init__(f"{request_id or 'the request'} did not end within {timeout:g} seconds")
        self.request_id = request_id
        self.timeout = timeout


class NoRequestIdError(ImagegateError):
    """The model's route answers synchronously, without a request id: the result is all there is."""


class WebhookVerificationError(ImagegateError):
    """The webhook's headers are missing or malformed, its timestamp is out of tolerance, or no
    signature matches: do not trust its body."""
