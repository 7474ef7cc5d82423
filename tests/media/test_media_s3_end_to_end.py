"""The real server with its media in a real S3 server (SeaweedFS, signatures checked): media URLs
are presigned URLs of the bucket, the API never proxies the bytes, inline data URIs still work."""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from harness import RunningServer, start_server, wait_status

from .support import S3Server

SUB = "Ocp-Apim-Subscription-Key"
PRESIGN_SECONDS = 600
TINY_JOB = {"prompt": "a red bicycle", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1, "seed": 3}
PREFIX = "e2e-media"


@pytest.fixture(scope="module")
def s3_api_server(
    s3_server: S3Server, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    # Clients get "localhost", imagegate uses 127.0.0.1: as a container name and a public name would differ.
    public_endpoint = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    query = urllib.parse.urlencode(
        {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "presign_endpoint_url": public_endpoint}
    )
    srv = start_server(
        tmp_path_factory.mktemp("s3-server"),
        config=tiny_models,
        extra_env={
            "IMAGEGATE_STORAGE_URL": f"s3://{s3_server.bucket}/{PREFIX}?{query}",
            "IMAGEGATE_S3_PRESIGN_SECONDS": str(PRESIGN_SECONDS),
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        },
    )
    yield srv
    srv.stop()


def assert_presigned(url: str, s3: S3Server) -> None:
    public_endpoint = s3.endpoint_url.replace("127.0.0.1", "localhost")
    assert url.startswith(f"{public_endpoint}/{s3.bucket}/{PREFIX}/"), url
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(PRESIGN_SECONDS)] and query["X-Amz-Signature"], url


def download(url: str) -> tuple[Image.Image, str]:
    r = httpx.get(url)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)), r.headers["content-type"]


def test_completed_job_media_url_is_a_presigned_s3_url(s3_api_server: RunningServer, s3_server: S3Server) -> None:
    key = s3_api_server.create_key("10")
    with s3_api_server.client() as client:
        r = client.post("/flux-dev/v1/dev/textToImage", json=TINY_JOB, headers={SUB: key})
        assert r.status_code == 202, r.text
        done = wait_status(client, r.json()["request_id"], key)
        assert done["status"] == "COMPLETED", done
        (url,) = done["output"]["media_url"]
        assert_presigned(url, s3_server)
        image, content_type = download(url)
        assert (image.size, content_type) == ((64, 64), "image/jpeg")

        # The object is private: without the signature the S3 server refuses it.
        assert httpx.get(url.split("?", 1)[0]).status_code == 403
        # The API's own media route does not serve the bytes; it sends the client to the bucket.
        object_key = urllib.parse.urlsplit(url).path.split(f"/{PREFIX}/", 1)[1]
        r = client.get(f"/media/{object_key}")
        assert r.status_code == 307 and r.content == b""
        assert_presigned(r.headers["location"], s3_server)
        assert download(r.headers["location"])[0].size == (64, 64)
        token = object_key.split("/", 1)[0]
        r = client.get(f"/media/{token}/no-such-output.png")
        assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_sync_mode_still_answers_inline_data_uris(s3_api_server: RunningServer) -> None:
    key = s3_api_server.create_key("10")
    with s3_api_server.client() as client:
        r = client.post("/flux-dev/v1/dev/textToImage", json={**TINY_JOB, "sync_mode": True, "output_format": "png"}, headers={SUB: key})
        assert r.status_code == 200, r.text
        (uri,) = r.json()["output"]["media_url"]
        assert uri.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (64, 64)


def test_sync_output_answers_a_presigned_url(s3_api_server: RunningServer, s3_server: S3Server) -> None:
    key = s3_api_server.create_key("10")
    body = {"prompt": "a neon city", "num_steps": 1, "seed": 1, "width": 64, "height": 64}
    with s3_api_server.client() as client:
        r = client.post("/flux-1-schnell/v1/getData", json=body, headers={SUB: key})
        assert r.status_code == 200, r.text
        assert_presigned(r.json()["output"], s3_server)
        assert download(r.json()["output"])[0].size == (64, 64)


class WebhookReceiver:
    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_payload_carries_presigned_urls(s3_api_server: RunningServer, s3_server: S3Server) -> None:
    receiver = WebhookReceiver()
    key = s3_api_server.create_key("10")
    try:
        with s3_api_server.client() as client:
            r = client.post("/flux-dev/v1/dev/textToImage", json=TINY_JOB, headers={SUB: key, "X-Webhook-URL": receiver.url})
            assert r.status_code == 202, r.text
        payload = receiver.bodies.get(timeout=120)
    finally:
        receiver.close()
    assert payload["status"] == "COMPLETED", payload
    (url,) = payload["output"]["media_url"]
    assert_presigned(url, s3_server)
    assert download(url)[0].size == (64, 64)
