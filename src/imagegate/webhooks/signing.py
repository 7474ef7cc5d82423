"""Standard Webhooks signatures: ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).

The key is the base64-decoded part of the key's ``whsec_…`` secret after the prefix. Receivers can
verify with :func:`verify` or with any Standard Webhooks library (``pip install standardwebhooks``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The headers are missing or malformed, the timestamp is out of tolerance, or no signature matches."""


def _secret_text(secret: str) -> str:
    text = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    # Secrets minted with the URL-safe alphabet decode to the same bytes once mapped to the
    # standard one; the two alphabets never mix in one valid string, so the mapping is safe.
    return text.strip().translate(str.maketrans("-_", "+/"))


def secret_key(secret: str) -> bytes:
    """The HMAC key behind a ``whsec_…`` secret (standard or URL-safe base64, padded or not)."""
    text = _secret_text(secret)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("the webhook secret is not valid base64 after 'whsec_'") from exc
    if not key:
        raise SignatureError("the webhook secret is empty")
    return key


def normalize_secret(secret: str) -> str:
    """The same secret in the standard base64 alphabet that every Standard Webhooks library expects."""
    text = _secret_text(secret)
    return SECRET_PREFIX + text.rstrip("=")


def _as_text(body: bytes | str) -> str:
    return body.decode("utf-8") if isinstance(body, bytes) else body


def sign(secret: str, msg_id: str, timestamp: int | float, body: bytes | str) -> str:
    """The ``webhook-signature`` header value for one delivery attempt."""
    to_sign = f"{msg_id}.{int(timestamp)}.{_as_text(body)}".encode()
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises :class:`SignatureError` unless it is authentic and fresh.

    ``body`` must be the raw request body, exactly as received (not re-serialised JSON).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp_text and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(timestamp_text)
    except ValueError as exc:
        raise SignatureError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    # Replays of an old (captured) delivery are refused, and so are clocks far in the future.
    if abs(current - timestamp) > tolerance:
        raise SignatureError("webhook-timestamp is outside the tolerance window")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    # A receiver may be sent several signatures (e.g. during a secret rotation): any v1 match wins.
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise SignatureError("no matching signature found")
