"""Hostile inputs and a hostile image host, shared by the tests in this folder.

Everything here is built for real, with Pillow or by hand from the file-format specs: no
mocks. The host is a real HTTP server on a loopback address whose routes misbehave on purpose
(hang, drip, oversize, redirect), so the fetcher meets them over real sockets.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

SUB = "Ocp-Apim-Subscription-Key"
SECRET = "X-Secret-Key"

UPSCALE = "/p-image-upscale/v1/p-image-upscale/generate"

# The hostile server's fetch bound and input size limit (see conftest.py).
FETCH_TIMEOUT_S = 2
MAX_INPUT_BYTES = 256 * 1024


# -- images ----------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def small_png(colour: tuple[int, int, int] = (90, 140, 200), size: tuple[int, int] = (24, 16)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


FRAME_COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]


def animated_gif() -> bytes:
    """Three flat frames, red first: a decoder that keeps the first frame sees red."""
    frames = [Image.new("RGB", (24, 16), c) for c in FRAME_COLOURS]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(Image.new("RGB", (24, 16), (200, 40, 40)).convert("CMYK"), "JPEG", quality=95)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png16(width: int, height: int, colour_type: int, channels: int, value: int) -> bytes:
    """A 16-bit-per-sample PNG built by hand (Pillow cannot write 16-bit RGB)."""
    row = b"\0" + struct.pack(">H", value) * (width * channels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(row * height))
        + _png_chunk(b"IEND", b"")
    )


def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG: a few KB on disk however large the canvas (a decompression bomb)."""
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = bytearray()
    rows_per_block = max(1, (4 * 1024 * 1024) // len(row))
    for start in range(0, height, rows_per_block):
        idat += compressor.compress(row * min(rows_per_block, height - start))
    idat += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(idat)) + _png_chunk(b"IEND", b"")


def gif_huge_screen() -> bytes:
    """A 2x2 GIF whose logical screen claims 65535x65535 pixels."""
    gif = encode(Image.new("P", (2, 2)), "GIF")
    return gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]


def jpeg_huge_header() -> bytes:
    """A real JPEG whose frame header claims 65500x65500; the scan data is for 64x64."""
    jpg = encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    sof = jpg.find(b"\xff\xc0")
    return jpg[: sof + 5] + struct.pack(">HH", 65500, 65500) + jpg[sof + 9 :]


def truncated_png() -> bytes:
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    return data[: len(data) // 2]


# -- zips and LoRA files -----------------------------------------------------------------------------


def patch_member(archive: bytes, name: str, **fields: int) -> bytes:
    """Rewrite header fields of member ``name`` in both its local header and its central
    directory entry: ``flags``, ``method``, ``crc``, ``compressed`` or ``size`` (what a hostile
    zip lies about)."""
    layout = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "crc": (14, 16, "<I"), "compressed": (18, 20, "<I"), "size": (22, 24, "<I")}
    data = bytearray(archive)
    encoded = name.encode()
    for signature, name_at, which in ((b"PK\x03\x04", 30, 0), (b"PK\x01\x02", 46, 1)):
        at = data.find(signature)
        while at >= 0 and data[at + name_at : at + name_at + len(encoded)] != encoded:
            at = data.find(signature, at + 1)
        assert at >= 0, (signature, name)
        for field_name, value in fields.items():
            offset = layout[field_name][which]
            struct.pack_into(layout[field_name][2], data, at + offset, value)
    return bytes(data)


def safetensors_of(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A well-formed safetensors file of zero-filled tensors: name -> (dtype, shape)."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header: dict[str, Any] = {}
    offset = 0
    for tensor, (dtype, shape) in tensors.items():
        length = sizes[dtype] * max(1, int(np.prod(shape)))
        header[tensor] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


# -- a misbehaving HTTP host -----------------------------------------------------------------------


@dataclass
class HostileHost:
    """Routes: /img/NAME (files), /status/CODE, /redirect?to=URL&code=302, /loop, /hang (never
    answers), /drip (headers, then a byte every 0.2 s), /big/N (N bytes with a Content-Length),
    /big-unsized/N (N bytes, no Content-Length), /empty (200, no body)."""

    base_url: str
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[name] = (data, content_type)
        return self.url(f"/img/{name}")

    def url(self, path: str) -> str:
        return self.base_url + path

    def redirect(self, to: str, code: int = 302) -> str:
        return self.url("/redirect?" + urllib.parse.urlencode({"to": to, "code": code}))

    def close(self) -> None:
        self.stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _body(self, status: int, body: bytes, content_type: str = "application/octet-stream", **extra: str) -> None:
        self._head(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **extra})
        self.wfile.write(body)

    def _stream(self, total: int) -> None:
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < total and not self.host.stop.is_set():
                n = min(len(chunk), total - sent)
                self.wfile.write(chunk[:n])
                sent += n
        except OSError:  # the fetcher hung up at its limit, as it should
            pass

    @property
    def host(self) -> HostileHost:
        return self.server.host

    def do_GET(self) -> None:
        host = self.host
        host.hits.append(self.path)
        parsed = urllib.parse.urlsplit(self.path)
        parts = parsed.path.strip("/").split("/")
        query = dict(urllib.parse.parse_qsl(parsed.query))
        route = parts[0]
        if route == "img" and len(parts) == 2 and parts[1] in host.files:
            data, content_type = host.files[parts[1]]
            self._body(200, data, content_type)
        elif route == "status":
            self._body(int(parts[1]), b"nope", "text/plain")
        elif route == "redirect":
            self._body(int(query.get("code", "302")), b"", "text/plain", Location=query["to"])
        elif route == "loop":
            self._body(302, b"", "text/plain", Location="/loop")
        elif route == "hang":
            host.stop.wait(60)
            self.close_connection = True
        elif route == "drip":
            self._head(200, {"Content-Type": "image/png", "Content-Length": "100000"})
            try:
                for _ in range(300):
                    if host.stop.wait(0.2):
                        break
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
        elif route == "big":
            total = int(parts[1])
            self._head(200, {"Content-Type": "image/png", "Content-Length": str(total)})
            self._stream(total)
            self.close_connection = True
        elif route == "big-unsized":
            total = int(parts[1])
            self._head(200, {"Content-Type": "image/png", "Connection": "close"})
            self._stream(total)
            self.close_connection = True
        elif route == "empty":
            self._body(200, b"", "image/png")
        else:
            self._body(404, b"no such file", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    host: HostileHost


def start_hostile_host(address: str = "127.0.0.1") -> HostileHost:
    server = _Server((address, 0), _Handler)
    port = server.server_address[1]
    host = HostileHost(base_url=f"http://{address}:{port}", server=server)
    server.host = host
    threading.Thread(target=server.serve_forever, name=f"hostile-host-{port}", daemon=True).start()
    return host


# -- talking to a running server -------------------------------------------------------------------


def server_db(server: Any) -> str:
    """The SQLite URL of a RunningServer's store."""
    return f"sqlite:///{Path(server.env['IMAGEGATE_DATA_DIR']) / 'imagegate.db'}"


def balance(client: httpx.Client, key: str) -> Decimal:
    r = client.get("/v2/account", headers={SUB: key})
    assert r.status_code == 200, r.text
    return Decimal(r.json()["balance"])


def wait_terminal(client: httpx.Client, request_id: str, key: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v2/requests/status/{request_id}", headers={SUB: key})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("COMPLETED", "FAILED", "ERROR", "CANCELED"):
            return body
        assert time.monotonic() < deadline, f"{request_id} still {body['status']} after {timeout} s"
        time.sleep(0.05)


def assert_still_serving(client: httpx.Client, probe_key: str) -> None:
    """/healthz answers, and a valid request is accepted and runs to completion."""
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    body = {"image": data_uri(small_png()), "upscale_mode": "factor", "factor": 1}
    r = client.post(UPSCALE, json=body, headers={SUB: probe_key})
    assert r.status_code == 202, r.text
    done = wait_terminal(client, r.json()["request_id"], probe_key)
    assert done["status"] == "COMPLETED", done
