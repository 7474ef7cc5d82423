"""Identifiers: time-ordered UUIDs (version 7) for requests, random tokens for secrets."""

from __future__ import annotations

import os
import secrets
import time
import uuid


def uuid7() -> uuid.UUID:
    """RFC 9562 UUIDv7: 48-bit millisecond timestamp, then randomness; sorts by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return uuid.UUID(int=value)


def new_request_id(model_id: str) -> str:
    return f"{model_id}_{uuid7()}"


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def unstorable(text: str) -> bool:
    """Text no id can hold: a NUL (which PostgreSQL text refuses) or a lone surrogate (which no
    driver can encode). Looking such an id up finds nothing, without asking the database."""
    return "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)
