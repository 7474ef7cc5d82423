"""Which webhook targets are acceptable: https anywhere public; http only to loopback in development."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from imagegate.config import Settings
from imagegate.exceptions import ValidationError

LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: object, field: str, settings: Settings) -> str:
    """Syntax and scheme at submit time; the address is checked again at every delivery."""
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
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and settings.allow_http_webhooks and _is_loopback(host):
        return url
    raise ValidationError(field, "must be an https:// URL (plain http:// is rejected)")
