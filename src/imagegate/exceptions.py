"""The exceptions imagegate raises, all rooted at :class:`ImagegateError`.

Hierarchy::

    ImagegateError
    ├── RequestError                 the client's request cannot be served (4xx at the edge)
    │   ├── ValidationError          a field breaks a rule (400)
    │   │   ├── UnsupportedMediaTypeError  the body's declared type is not the route's (415)
    │   │   └── PayloadTooLargeError       the body, or a file in it, is over its limit (413)
    │   ├── AuthenticationError      missing or unknown key (401)
    │   ├── KeyDisabledError         the key exists but is disabled (403)
    │   ├── ModelNotFoundError       unknown or disabled model (400, dojo 404)
    │   ├── InsufficientBalanceError the wallet cannot cover the price (402)
    │   ├── RateLimitedError         per-key rate limit exceeded (429)
    │   ├── RequestNotFoundError     no such request for this key (404)
    │   ├── ConflictError            contradicts the current state (409)
    │   │   └── IdempotencyConflictError  same Idempotency-Key, different body (409)
    │   └── SyncTimeoutError         a synchronous request outlived its bound (504)
    ├── SchemaAheadError             the database was migrated by a newer imagegate: refuse to start
    └── JobError                     a job cannot finish; recorded on the job, never escapes a worker
        ├── InputError               an input (URL, data URI, image) is unusable: job FAILED
        ├── SafetyError              reserved for safety-policy failures: job FAILED
        ├── JobCanceledError         the job was canceled while running: job CANCELED
        └── SystemJobError           imagegate's own fault: job ERROR, not charged
            ├── WeightsNotFoundError model weights are missing
            ├── EngineError          the model raised (OOM included)
            └── StorageError         an output could not be stored
    └── OutboundRefusedError         an outbound connection (input URL, webhook) was not made;
        │                            the caller says what that means for its request
        ├── AddressRefusedError      the address policy refuses the target
        └── UnresolvableHostError    the name did not resolve (in time)

HTTP mapping happens once, in ``imagegate.api.errors``; job statuses are chosen once, in
``imagegate.runtime.worker``.
"""

from __future__ import annotations


class ImagegateError(Exception):
    """Root of every error imagegate raises on purpose."""


class RequestError(ImagegateError):
    """The client's request cannot be served. Which HTTP status (and which protocol's body) it
    becomes is decided once, in :mod:`imagegate.api.errors`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(RequestError):
    """A field breaks a rule; the message names both."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field} {rule}" if field else rule)


class UnsupportedMediaTypeError(ValidationError):
    """The body is declared as something other than what the route reads."""


class PayloadTooLargeError(ValidationError):
    """The body, or a file in it, is larger than the route accepts (a body is refused while it
    streams in)."""


class AuthenticationError(RequestError):
    """No key, or a key imagegate does not know."""


class KeyDisabledError(RequestError):
    """The key exists but is disabled."""


class ModelNotFoundError(RequestError):
    """An unknown or disabled model."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"Model '{model_id}' not found or is disabled")


class InsufficientBalanceError(RequestError):
    """The wallet cannot cover the price."""

    def __init__(self, required_micros: int) -> None:
        self.required_micros = required_micros
        from imagegate.billing.money import format_usd

        super().__init__(
            f"Your wallet does not have enough balance. Required: ${format_usd(required_micros, trim=True)}"
        )


class RateLimitedError(RequestError):
    """The key's rate limit is exceeded."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__("Too many requests; retry later")


class RequestNotFoundError(RequestError):
    """No such request (or key, or object) for this caller."""


class ConflictError(RequestError):
    """The request contradicts the current state of what it names."""


class IdempotencyConflictError(ConflictError):
    """The same Idempotency-Key with a different body."""


class SyncTimeoutError(RequestError):
    """A synchronous request outlived its bound."""


class SchemaAheadError(ImagegateError):
    """The database's schema is newer than this code knows; the process refuses to start."""


class JobError(ImagegateError):
    """A job-level failure; the worker turns it into the job's status and error text."""


class InputError(JobError):
    """An input is unusable: the request's fault, the job ends FAILED naming the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class SafetyError(JobError):
    """Reserved for safety-policy failures (FAILED)."""


class JobCanceledError(JobError):
    """The job was canceled while running (CANCELED)."""


class SystemJobError(JobError):
    """imagegate's own fault: ERROR, not charged."""


class WeightsNotFoundError(SystemJobError):
    """Model weights are missing."""


class EngineError(SystemJobError):
    """The model raised (out-of-memory included)."""


class StorageError(SystemJobError):
    """An output could not be stored."""


class OutboundRefusedError(ImagegateError):
    """An outbound connection to a client-chosen URL was not made. The fetcher turns it into an
    InputError for the field; the webhook deliverer into the attempt's error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AddressRefusedError(OutboundRefusedError):
    """The address policy refuses where the URL points (loopback, private, metadata, ...)."""


class UnresolvableHostError(OutboundRefusedError):
    """The host name did not resolve, or not in time."""
