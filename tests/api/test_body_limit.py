"""Request bodies are refused while they stream, through the real server: the serve process (which
also hosts the worker supervisor and the webhook deliverer) never holds a body a client chose to
make large, and goes on serving."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from typing import Iterator

import pytest
from PIL import Image

from harness import RunningServer, peak_rss, start_server, wait_status

BODY_TOO_LARGE = "body must be at most 40 MB (this request's body is larger)"
from imagegate.api.body_limit import MAX_BODY_BYTES, MULTIPART_MARGIN_BYTES, UPLOAD_PATH

SUB = "Ocp-Apim-Subscription-Key"
UPSCALE = "/p-image-upscale/v1/p-image-upscale/generate"
DOJO = "/api/v1/models/boogu-image-edit/run"
HOSTILE_BYTES = 600 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)
MAX_INPUT_BYTES = 2 * 1024 * 1024
# The serve process may hold one limit's worth of body while it counts a chunked one, never more.
PEAK_GROWTH_BOUND = MAX_BODY_BYTES + 32 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(
        tmp_path_factory.mktemp("body-limit"), config=None, workers=1,
        extra_env={"IMAGEGATE_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES)},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server: RunningServer) -> str:
    return server.create_key("10", name="body-limit")


def connect(server: RunningServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_declared(server: RunningServer, path: str, length: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, float]:
    """Declare ``length`` bytes, send the first megabyte, and take the answer."""
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(request_head(path, {**headers, "Content-Length": str(length)}))
        try:
            sock.sendall(CHUNK)
        except OSError:
            pass  # the server may already have answered and hung up
        status, response_headers, body = read_response(sock)
    return status, response_headers, body, time.monotonic() - started


def send_chunked(server: RunningServer, path: str, total: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, int]:
    """Stream up to ``total`` bytes chunked until the server answers; returns how much was sent."""
    sent = 0
    with connect(server) as sock:
        sock.sendall(request_head(path, {**headers, "Transfer-Encoding": "chunked"}))
        try:
            while sent < total:
                sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
                sent += len(CHUNK)
        except OSError:
            pass  # answered and closed: the rest is never read
        status, response_headers, body = read_response(sock)
    return status, response_headers, body, sent


def test_a_declared_600_mb_body_is_refused_before_it_is_read(server: RunningServer, key: str) -> None:
    before = peak_rss(server.proc.pid)
    status, headers, body, elapsed = send_declared(server, UPSCALE, HOSTILE_BYTES, {SUB: key})
    assert status == 413, body
    assert json.loads(body) == {"error": BODY_TOO_LARGE, "message": BODY_TOO_LARGE, "field": "body"}
    assert headers.get("connection") == "close"
    assert elapsed < 5, elapsed
    assert peak_rss(server.proc.pid) - before < 16 * 1024 * 1024


def test_a_chunked_body_is_cut_off_at_the_limit(server: RunningServer, key: str) -> None:
    before = peak_rss(server.proc.pid)
    started = time.monotonic()
    status, _headers, body, sent = send_chunked(server, UPSCALE, HOSTILE_BYTES, {SUB: key})
    elapsed = time.monotonic() - started
    assert status == 413, body
    assert json.loads(body)["message"] == BODY_TOO_LARGE
    # Refused at the limit, not at the end: the client could not even send a fifth of it.
    assert sent < HOSTILE_BYTES / 5, sent
    assert elapsed < 30, elapsed
    assert peak_rss(server.proc.pid) - before < PEAK_GROWTH_BOUND


def test_each_protocol_gets_its_own_error_shape(server: RunningServer, key: str) -> None:
    status, _h, body, _t = send_declared(server, DOJO, HOSTILE_BYTES, {"Authorization": f"Bearer {key}"})
    assert status == 413
    assert json.loads(body) == {"error": {"code": "invalid_request", "message": BODY_TOO_LARGE}}
    status, _h, body, _t = send_declared(server, "/v1/images/generations", HOSTILE_BYTES, {"Authorization": f"Bearer {key}"})
    assert status == 413
    assert json.loads(body) == {
        "error": {
            "message": BODY_TOO_LARGE,
            "type": "invalid_request_error",
            "param": "body",
            "code": "payload_too_large",
        }
    }


def test_the_upload_path_is_limited_by_the_input_size(server: RunningServer, key: str) -> None:
    limit = MAX_INPUT_BYTES + MULTIPART_MARGIN_BYTES
    status, _h, body, _t = send_declared(server, UPLOAD_PATH, limit + 1, {SUB: key})
    assert status == 413 and json.loads(body)["message"] == "body must be at most 2112 KB (this request's body is larger)"
    # At the limit the body is the route's business: it answers for itself (here: not multipart).
    with connect(server) as sock:
        sock.sendall(request_head(UPLOAD_PATH, {SUB: key, "Content-Length": str(limit)}))
        status, _h, body = read_response(sock)
    assert status == 415 and json.loads(body)["field"] == "Content-Type", body


def test_bodies_under_the_limit_still_work_and_the_server_keeps_serving(server: RunningServer, key: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 140, 200)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    # Padding in an ignored field: a large body, still under the limit, is read and accepted.
    body = {"image": image, "upscale_mode": "factor", "factor": 1, "notes": "x" * (MAX_BODY_BYTES - 64 * 1024)}
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        r = client.post(UPSCALE, json=body, headers={SUB: key})
        assert r.status_code == 202, r.text
        assert wait_status(client, r.json()["request_id"], key)["status"] == "COMPLETED"
    assert server.proc.poll() is None
