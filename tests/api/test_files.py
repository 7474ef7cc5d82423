"""POST /v2/files and GET /v2/files/{id} through the real server, and uploads as inputs of jobs.

The server here refuses private URLs (the default), so an upload URL working as an input proves
the worker reads it from the store and the storage, not over loopback HTTP.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from harness import RunningServer, png_bytes, sample_photo, start_server, wait_status

SUB = "Ocp-Apim-Subscription-Key"
MAX_INPUT_BYTES = 300_000
MAX_INPUT_PIXELS = 100_000
I2I = "/flux-dev/v1/dev/imageToImage"


@pytest.fixture(scope="module")
def guarded_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(
        tmp_path_factory.mktemp("uploads"),
        config=tiny_models,
        extra_env={
            "IMAGEGATE_ALLOW_PRIVATE_URLS": "false",
            "IMAGEGATE_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
            "IMAGEGATE_MAX_INPUT_PIXELS": str(MAX_INPUT_PIXELS),
        },
    )
    yield srv
    srv.stop()


def upload(server: RunningServer, key: str, data: bytes, name: str = "photo.png", headers: dict[str, str] | None = None) -> Any:
    with server.client() as client:
        return client.post("/v2/files", files={"file": (name, data, "application/octet-stream")}, headers=headers or {SUB: key})


def test_upload_answers_its_url_and_only_its_key_reads_it(guarded_server: RunningServer) -> None:
    key, other = guarded_server.create_key("1"), guarded_server.create_key("1")
    data = png_bytes(sample_photo())
    r = upload(guarded_server, key, data, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert list(body) == ["url", "content_type", "size", "expires_at"]
    assert body["url"].startswith(f"{guarded_server.base_url}/v2/files/file_")
    assert body["content_type"] == "image/png" and body["size"] == len(data)
    expires = time.mktime(time.strptime(body["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(expires - (time.time() + 24 * 3600)) < 120
    with guarded_server.client() as client:
        r = client.get(body["url"], headers={"X-Secret-Key": key})
        assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "image/png"
        r = client.get(body["url"], headers={SUB: other})
        assert r.status_code == 404 and r.json()["error"] == "Not Found"
        assert client.get(body["url"]).status_code == 401


def test_an_upload_is_an_input_for_its_key_only(guarded_server: RunningServer, image_host: Any) -> None:
    key, other = guarded_server.create_key("1"), guarded_server.create_key("1")
    url = upload(guarded_server, key, png_bytes(sample_photo(seed=3), "JPEG"), "photo.jpg").json()["url"]
    body = {"prompt": "a watercolour", "num_inference_steps": 2, "image_url": url}
    with guarded_server.client() as client:
        mine = client.post(I2I, json=body, headers={SUB: key}).json()["request_id"]
        theirs = client.post(I2I, json=body, headers={SUB: other}).json()["request_id"]
        loopback = client.post(I2I, json={**body, "image_url": f"{image_host.base_url}/photo.png"}, headers={SUB: key}).json()["request_id"]
        done = wait_status(client, mine, key)
        assert done["status"] == "COMPLETED", done
        image = Image.open(io.BytesIO(client.get(done["output"]["media_url"][0]).content))
        assert image.size == (96, 64)
        failed = wait_status(client, theirs, other)
        assert failed["status"] == "FAILED"
        assert failed["error"].startswith(f"image_url: could not read {url}: no such upload for this key")
        # The same server still refuses loopback URLs: the upload was not fetched over HTTP.
        refused = wait_status(client, loopback, key)
        assert refused["status"] == "FAILED" and "private or loopback" in refused["error"]


def test_an_uploaded_zip_feeds_a_trainer(guarded_server: RunningServer) -> None:
    key = guarded_server.create_key("10")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", png_bytes(sample_photo(seed=4)))
    r = upload(guarded_server, key, archive.getvalue(), "set.zip")
    assert r.status_code == 201, r.text
    assert r.json()["content_type"] == "application/zip"
    path = "/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request"
    with guarded_server.client() as client:
        queued = client.post(path, json={"image_data_url": r.json()["url"], "steps": 1}, headers={SUB: key})
        done = wait_status(client, queued.json()["request_id"], key)
    assert done["status"] == "COMPLETED", done


def test_uploads_are_held_to_the_input_limits(guarded_server: RunningServer) -> None:
    key = guarded_server.create_key("1")
    r = upload(guarded_server, key, b"hello, not a picture", "notes.txt")
    assert r.status_code == 400 and r.json()["field"] == "file"
    assert r.json()["message"].endswith("(uploads are images, or zips of images for the trainers)")
    r = upload(guarded_server, key, png_bytes(Image.new("RGB", (400, 400), "white")))
    assert r.status_code == 400 and "pixel limit" in r.json()["message"]
    r = upload(guarded_server, key, b"\x89PNG" + b"\0" * MAX_INPUT_BYTES)
    message = "file is larger than the input limit (300,000 bytes, max_input_bytes)"
    assert r.status_code == 413 and r.json() == {"error": message, "message": message, "field": "file"}
    r = upload(guarded_server, key, b"\0" * (3 * MAX_INPUT_BYTES + 2 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["field"] == "body"
    with guarded_server.client() as client:
        r = client.post("/v2/files", data={"other": "x"}, files={"image": ("a.png", b"x")}, headers={SUB: key})
        assert r.status_code == 400 and r.json()["field"] == "file"
        r = client.post("/v2/files", json={"file": "x"}, headers={SUB: key})
        assert r.status_code == 415 and r.json()["field"] == "Content-Type"
