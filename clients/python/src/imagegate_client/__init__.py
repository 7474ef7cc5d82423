"""imagegate's Python client.

    from imagegate_client import Client
    client = Client("http://127.0.0.1:8000", "ig_...")
    result = client.run("flux-dev", {"prompt": "a fox"})

:class:`Client` blocks, :class:`AsyncClient` is its asyncio twin; both depend on httpx only.
"""

from imagegate_client._async import AsyncClient, AsyncHandle
from imagegate_client._core import __version__
from imagegate_client._sync import Client, Handle
from imagegate_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ImagegateError,
    InsufficientBalanceError,
    ModelNotFoundError,
    NoRequestIdError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    ServerError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from imagegate_client.models import (
    Account,
    CatalogEntry,
    CatalogRoute,
    PriceRule,
    ProgressEvent,
    Protocol,
    QueueOutput,
    QueueStatus,
    Result,
    Status,
    Uploaded,
    decode,
)
from imagegate_client.retries import RetryPolicy
from imagegate_client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Account",
    "AsyncClient",
    "AsyncHandle",
    "AuthenticationError",
    "BadRequestError",
    "CatalogEntry",
    "CatalogRoute",
    "Client",
    "ConflictError",
    "Handle",
    "ImagegateError",
    "InsufficientBalanceError",
    "ModelNotFoundError",
    "NoRequestIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "PriceRule",
    "ProgressEvent",
    "Protocol",
    "QueueOutput",
    "QueueStatus",
    "RateLimitError",
    "RequestFailedError",
    "Result",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "Status",
    "UnexpectedResponseError",
    "Uploaded",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "__version__",
    "decode",
    "verify_webhook",
]
