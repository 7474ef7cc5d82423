"""Which webhook targets are acceptable: https anywhere public; http only to loopback in development."""

from __future__ import annotations

from urllib.parse import urlsplit

from imagegate.config import Settings
from imagegate.exceptions import ValidationError
from imagegate.network import AddressPolicy, is_loopback_host, literal_address


def check_webhook_url(url: object, field: str, settings: Settings) -> str:
    """Syntax, scheme and, for an IP literal, the address policy, at submit time (no DNS); every
    delivery checks the addresses a name resolves to again."""
    if not isinstance(url, str) or not url:
        raise ValidationError(field, "must be a URL string")
    if len(url) > 2048:
        raise ValidationError(field, "must be at most 2048 characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise ValidationError(field, "is not a valid URL (Invalid webhook URL)") from exc
    if not host or parts.port == 0:
        raise ValidationError(field, "is not a valid URL (Invalid webhook URL)")
    development = parts.scheme == "http" and settings.allow_http_webhooks and is_loopback_host(host)
    if parts.scheme != "https" and not development:
        raise ValidationError(field, "must be an https:// URL (plain http:// is rejected)")
    address = literal_address(host)
    if address is not None:
        reason = AddressPolicy.for_webhooks(settings, parts.scheme).refusal(address)
        if reason is not None:
            raise ValidationError(field, f"must point to a public address: {reason}")
    return url
