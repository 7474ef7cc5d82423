"""verify_webhook against webhooks the real server signed and delivered, and against the Standard
Webhooks test vector."""

from __future__ import annotations

import base64
import time

import pytest
from harness import RunningServer
from webhooks.conftest import Receiver

from imagegate_client import Client, QueueStatus, Status, WebhookVerificationError, decode, verify_webhook

from .support import FAST, FLUX_DEV

# The published Standard Webhooks test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_HEADERS = {
    "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "webhook-timestamp": "1614265330",
    "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
SPEC_BODY = b'{"test": 2432232314}'


def _key_with_secret(server: RunningServer) -> tuple[str, str]:
    """(API key, webhook secret), as `imagegate keys create` prints them."""
    lines = server.cli("keys", "create", "--balance", "10", "--name", "hooks").stdout.strip().splitlines()
    secret = next(line.split(": ", 1)[1] for line in lines if line.startswith("webhook secret: "))
    return lines[-1], secret


def test_a_delivery_from_the_server_verifies_and_decodes_to_its_status_object(server: RunningServer) -> None:
    key, secret = _key_with_secret(server)
    receiver = Receiver()
    try:
        with Client(server.base_url, key) as client:
            result = client.submit("flux-dev", FAST, route=FLUX_DEV, webhook_url=receiver.url()).result(timeout=180)
        (got,) = receiver.wait_for(1, timeout=30)
    finally:
        receiver.close()
    payload = verify_webhook(secret, got.headers, got.body)
    status = decode(QueueStatus, payload)
    assert status.request_id == result.request_id and status.status is Status.COMPLETED
    assert status.output is not None and status.output.media_url == result.urls

    other = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
    refusals = {
        "tampered body": (secret, got.headers, got.body.replace(b"COMPLETED", b"FAILED"), {}),
        "other secret": (other, got.headers, got.body, {}),
        "replayed later": (secret, got.headers, got.body, {"now": time.time() + 301}),
        "no signature": (secret, {k: v for k, v in got.headers.items() if k != "webhook-signature"}, got.body, {}),
        "other id": (secret, {**got.headers, "webhook-id": "msg_other"}, got.body, {}),
    }
    for what, (s, headers, body, options) in refusals.items():
        with pytest.raises(WebhookVerificationError):
            verify_webhook(s, headers, body, **options)
            pytest.fail(f"{what} was accepted")


def test_the_standard_webhooks_vector_verifies_with_any_of_several_signatures() -> None:
    now = int(SPEC_HEADERS["webhook-timestamp"]) + 10
    assert verify_webhook(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY, now=now) == {"test": 2432232314}
    rotated = {**SPEC_HEADERS, "webhook-signature": "v1,AAAA v2,zzz " + SPEC_HEADERS["webhook-signature"]}
    assert verify_webhook(SPEC_SECRET, rotated, SPEC_BODY.decode(), now=now) == {"test": 2432232314}
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY)
