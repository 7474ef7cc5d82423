"""Uploads below the API, on SQLite and PostgreSQL: what an upload accepts, who can read it as an
input and until when, and the housekeeping sweep that deletes expired ones."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from harness import png_bytes, sample_photo
from imagegate.config import Settings
from imagegate.exceptions import InputError, PayloadTooLargeError, ValidationError
from imagegate.jobs.store import JobStore
from imagegate.media.inputs import InputFetcher
from imagegate.media.storage import LocalStorage
from imagegate.media.uploads import StoredUploads, check_upload, new_upload_id, save_upload, upload_url
from imagegate.runtime.housekeeping import sweep

BASE = "http://images.example"
HOUR = 3600.0


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, public_base_url=BASE, upload_ttl_hours=1)


def test_check_upload_takes_images_and_zips_within_the_input_limits() -> None:
    photo = png_bytes(sample_photo(), "JPEG")
    assert check_upload(photo, field="file", max_bytes=10**6, max_pixels=10**6) == "image/jpeg"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", photo)
    assert check_upload(archive.getvalue(), field="file", max_bytes=10**6, max_pixels=10**6) == "application/zip"
    with pytest.raises(PayloadTooLargeError):
        check_upload(photo, field="file", max_bytes=len(photo) - 1, max_pixels=10**6)
    with pytest.raises(ValidationError, match="pixel limit"):
        check_upload(photo, field="file", max_bytes=10**6, max_pixels=100)
    with pytest.raises(ValidationError, match="zip"):
        check_upload(b"PK\x03\x04 broken", field="file", max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(ValidationError, match="is empty"):
        check_upload(b"", field="file", max_bytes=10**6, max_pixels=10**6)


def test_the_fetcher_reads_uploads_for_their_key_until_they_expire(store: JobStore, tmp_path: Path) -> None:
    config = settings(tmp_path)
    storage = LocalStorage(tmp_path / "media")
    _, owner = store.keys.create(name="owner")
    _, other = store.keys.create(name="other")
    data = png_bytes(sample_photo())
    upload = save_upload(store, storage, config, key_id=owner.id, upload_id=new_upload_id(), data=data, content_type="image/png")
    url = upload_url(BASE, upload.id)
    fetcher = InputFetcher(allow_private=False)
    fetcher.own_inputs = StoredUploads(store, storage, config)

    with fetcher.on_behalf_of(owner.id):
        assert fetcher.fetch_bytes(url, field="image_url") == data
        assert fetcher.fetch_image(url, field="image_url").size == (96, 64)
    with fetcher.on_behalf_of(other.id), pytest.raises(InputError, match="^image_url: could not read .* no such upload for this key"):
        fetcher.fetch_bytes(url, field="image_url")
    with pytest.raises(InputError, match="no such upload"):  # outside any job
        fetcher.fetch_bytes(url, field="image_url")
    with fetcher.on_behalf_of(owner.id), pytest.raises(InputError, match="no such upload"):
        fetcher.fetch_bytes(upload_url(BASE, "file_nope"), field="images[0]")
    assert upload.readable_by(owner.id, now=upload.created_at + HOUR - 1)
    assert not upload.readable_by(owner.id, now=upload.created_at + HOUR)


def test_housekeeping_deletes_expired_uploads(store: JobStore, tmp_path: Path) -> None:
    config = settings(tmp_path)
    storage = LocalStorage(tmp_path / "media")
    _, key = store.keys.create(name="sweep")
    made = [
        save_upload(store, storage, config, key_id=key.id, upload_id=new_upload_id(), data=b"x%d" % i, content_type="image/png")
        for i in range(3)
    ]
    assert sweep(store, config, storage, now=time.time())["expired uploads"] == 0
    assert sweep(store, config, storage, now=time.time() + HOUR + 1)["expired uploads"] == 3
    for upload in made:
        assert store.uploads.get(upload.id) is None
        assert not storage.exists(upload.storage_key)
