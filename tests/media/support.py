"""Helpers shared by the media tests: test images, and the shapes of the servers' handles."""

from __future__ import annotations

import io
import socket
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

RED = (220, 30, 30)
GREEN = (30, 200, 60)
BLUE = (40, 60, 220)
YELLOW = (240, 220, 40)


def quadrant_image(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Four flat quadrants (red, green / blue, yellow): survives lossy codecs, shows rotation."""
    w, h = size
    img = Image.new("RGB", size, RED)
    img.paste(GREEN, (w // 2, 0, w, h // 2))
    img.paste(BLUE, (0, h // 2, w // 2, h))
    img.paste(YELLOW, (w // 2, h // 2, w, h))
    return img


def encode_with_pillow(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}


BIG_BODY = 2 * 1024 * 1024  # served by the oversize endpoints; tests use a 1 MiB limit


@dataclass
class LoopbackServer:
    base_url: str  # e.g. http://127.0.0.1:12345
    port: int
    files: dict[str, tuple[bytes, str]]
    stop: threading.Event
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass
class TlsMaterial:
    ca_file: Path
    cert_file: Path
    key_file: Path


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str


def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of one colour, built by hand: a few KB on disk however large the
    canvas, i.e. a decompression bomb without allocating the image to make it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (4 * 1024 * 1024) // len(row))
    idat = bytearray()
    for start in range(0, height, rows_per_block):
        idat += compressor.compress(row * min(rows_per_block, height - start))
    idat += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")
