"""The exceptions imagegate raises, all rooted at :class:`ImagegateError`.

Hierarchy::

    ImagegateError
    ├── RequestError                 the client's request cannot be served (4xx at the edge)
    │   ├── ValidationError          a field breaks a rule (400)
    │   ├── AuthenticationError      missing or unknown key (401)
    │   ├── KeyDisabledError         the key exists but is disabled (403)
    │   ├── ModelNotFoundError       unknown or disabled model (400, dojo 404)
    │   ├── InsufficientBalanceError the wallet cannot cover the price (402)
    │   ├── RateLimitedError         per-key rate limit exceeded (429)
    │   ├── RequestNotFoundError     no such request for this key (404)
    │   ├── IdempotencyConflictError same Idempotency-Key, different body (409)
    │   └── SyncTimeoutError         a synchronous request outlived its bound (504)
    └── JobError                     a job cannot finish; recorded on the job, never escapes a worker
        ├── InputError               an input (URL, data URI, image) is unusable: job FAILED
        ├── SafetyError              reserved for safety-policy failures: job FAILED
        ├── JobCanceledError         the job was canceled while running: job CANCELED
        └── SystemJobError           imagegate's own fault: job ERROR, not charged
            ├── WeightsNotFoundError model weights are missing
            ├── EngineError          the model raised (OOM included)
            └── StorageError         an output could not be stored

HTTP mapping happens once, in ``imagegate.api.errors``; job statuses are chosen once, in
``imagegate.jobs.worker``.
"""

from __future__ import annotations


class ImagegateError(Exception):
    """Root of every error imagegate raises on purpose."""


class RequestError(ImagegateError):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(RequestError):
    status_code = 400

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field} {rule}" if field else rule)


class AuthenticationError(RequestError):
    status_code = 401


class KeyDisabledError(RequestError):
    status_code = 403


class ModelNotFoundError(RequestError):
    status_code = 400

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"Model '{model_id}' not found or is disabled")


class InsufficientBalanceError(RequestError):
    status_code = 402

    def __init__(self, required_micros: int) -> None:
        self.required_micros = required_micros
        from imagegate.billing.money import format_usd

        super().__init__(
            f"Your wallet does not have enough balance. Required: ${format_usd(required_micros, trim=True)}"
        )


class RateLimitedError(RequestError):
    status_code = 429

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__("Too many requests; retry later")


class RequestNotFoundError(RequestError):
    status_code = 404


class IdempotencyConflictError(RequestError):
    status_code = 409


class SyncTimeoutError(RequestError):
    status_code = 504


class JobError(ImagegateError):
    """A job-level failure; the worker turns it into the job's status and error text."""


class InputError(JobError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SafetyError(JobError):
    pass


class JobCanceledError(JobError):
    pass


class SystemJobError(JobError):
    pass


class WeightsNotFoundError(SystemJobError):
    pass


class EngineError(SystemJobError):
    pass


class StorageError(SystemJobError):
    pass
