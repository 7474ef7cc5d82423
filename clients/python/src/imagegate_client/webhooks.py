"""Verifying imagegate's webhooks (Standard Webhooks signatures).

A delivery carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers; the
signature is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{raw body}")), where the key is
the base64-decoded part of the key's ``whsec_…`` secret after the prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from imagegate_client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


def _secret_key(secret: str) -> bytes:
    text = secret.removeprefix(SECRET_PREFIX).strip()
    # Standard or URL-safe base64, padded or not: the two alphabets never mix in one valid secret.
    text = text.translate(str.maketrans("-_", "+/"))
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the webhook secret is not valid base64 after 'whsec_'") from exc
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Check a received webhook and return its decoded JSON body; raises
    :class:`~imagegate_client.errors.WebhookVerificationError` unless it is authentic and its
    timestamp is within ``tolerance`` seconds of ``now`` (replays of old deliveries are refused).

    ``body`` must be the raw request body exactly as received, not re-serialised JSON. A queue
    request's payload is its status object: ``decode(QueueStatus, payload)`` types it.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp_text and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(timestamp_text)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_secret_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode("ascii")
    # Several signatures may be sent (during a secret rotation): any v1 match is enough.
    if not any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (candidate.partition(",") for candidate in signatures.split())
    ):
        raise WebhookVerificationError("no matching signature found")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("the signed body is not JSON") from exc
