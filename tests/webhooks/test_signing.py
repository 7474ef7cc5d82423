from __future__ import annotations

import base64
import time

import pytest

from imagegate.webhooks.signing import SignatureError, normalize_secret, secret_key, sign, verify

# The published Standard Webhooks test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_matches_the_standard_webhooks_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIGNATURE}
    verify(SPEC_SECRET, headers, SPEC_BODY.encode(), now=SPEC_TS + 10)


def test_verify_refuses_tampering_replay_and_wrong_secret() -> None:
    now = time.time()
    ts = int(now)
    body = b'{"request_id":"r1","status":"COMPLETED"}'
    good = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": sign(SPEC_SECRET, "msg_1", ts, body)}
    verify(SPEC_SECRET, good, body)
    with pytest.raises(SignatureError):
        verify(SPEC_SECRET, good, body.replace(b"COMPLETED", b"FAILED"))
    with pytest.raises(SignatureError):
        verify(SPEC_SECRET, {**good, "webhook-id": "msg_2"}, body)
    with pytest.raises(SignatureError):
        verify("whsec_" + base64.b64encode(b"another key of 24 bytes!").decode(), good, body)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SPEC_SECRET, good, body, now=now + 301)
    with pytest.raises(SignatureError, match="missing"):
        verify(SPEC_SECRET, {"webhook-id": "msg_1"}, body)
    # Several signatures (as during a rotation): any v1 match is enough.
    multi = {**good, "webhook-signature": "v1,AAAA v2,zzz " + good["webhook-signature"]}
    verify(SPEC_SECRET, multi, body)


def test_url_safe_secrets_are_the_same_key_as_their_standard_form() -> None:
    raw = bytes(range(250, 256)) + b"\xfb\xff" * 9  # bytes whose base64 needs '+' and '/'
    urlsafe = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe[6:]
    assert secret_key(urlsafe) == raw
    assert secret_key(normalize_secret(urlsafe)) == raw
    assert "-" not in normalize_secret(urlsafe) and "_" not in normalize_secret(urlsafe)[6:]


def test_the_official_library_verifies_our_signature() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    raw = b"\xfb\xef\xff" * 8
    secret = "whsec_" + base64.urlsafe_b64encode(raw).decode()  # the alphabet imagegate mints with
    ts = int(time.time())
    body = '{"request_id":"r1","status":"COMPLETED"}'
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(ts), "webhook-signature": sign(secret, "msg_x", ts, body)}
    assert standardwebhooks.Webhook(normalize_secret(secret)).verify(body, headers) == {
        "request_id": "r1",
        "status": "COMPLETED",
    }
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(normalize_secret(secret)).verify(body.replace("r1", "r2"), headers)
