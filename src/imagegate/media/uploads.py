"""Uploaded inputs: files a key stores with ``POST /v2/files`` and then names by URL in any image
(or zip) field of any endpoint.

An upload is checked against the limits of fetched inputs when it arrives (``max_input_bytes``;
an image must decode within ``max_input_pixels``; a zip must open, for the trainers), kept in the
media storage under an unguessable key that no media URL can reach, and recorded in the store with
its owner and expiry. Workers read it back through :class:`StoredUploads`, the input fetcher's hook
for this server's own URLs: from the store and the storage directly, never over HTTP (so
``allow_private_urls`` plays no part), and only for jobs of the key that uploaded it.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile

from PIL import Image

from imagegate.config import Settings
from imagegate.exceptions import InputError, PayloadTooLargeError, StorageError, ValidationError
from imagegate.jobs.ids import new_token
from imagegate.jobs.store import JobStore, Upload
from imagegate.media.codecs import decode_image
from imagegate.media.storage import Storage

log = logging.getLogger("imagegate.uploads")

FILES_PATH = "/v2/files"
ZIP_MAGIC = b"PK\x03\x04"
ZIP_TYPE = "application/zip"


def upload_url(base_url: str, upload_id: str) -> str:
    return f"{base_url}{FILES_PATH}/{upload_id}"


def new_upload_id() -> str:
    return "file_" + new_token(18)


def check_upload(data: bytes, *, field: str, max_bytes: int, max_pixels: int) -> str:
    """The content type of an acceptable upload, or a ValidationError naming ``field``."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(field, f"is larger than the input limit ({max_bytes:,} bytes, max_input_bytes)")
    if not data:
        raise ValidationError(field, "is empty")
    if data.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                archive.namelist()
        except zipfile.BadZipFile as exc:
            raise ValidationError(field, "is not a readable zip archive") from exc
        return ZIP_TYPE
    try:
        decode_image(data, field=field, max_pixels=max_pixels)
    except InputError as exc:
        raise ValidationError(field, f"{exc.reason} (uploads are images, or zips of images for the trainers)") from exc
    with Image.open(io.BytesIO(data)) as image:
        return Image.MIME.get(image.format or "", "application/octet-stream")


def save_upload(
    store: JobStore, storage: Storage, settings: Settings, *, key_id: str, upload_id: str, data: bytes, content_type: str
) -> Upload:
    """Store checked bytes and record whose they are. The storage key has three segments and a
    random one of its own, so no media URL (``/media/<token>/<name>``) can ever reach it."""
    now = time.time()
    upload = Upload(
        id=upload_id,
        key_id=key_id,
        storage_key=f"uploads/{new_token(18)}/{upload_id}",
        content_type=content_type,
        size=len(data),
        created_at=now,
        expires_at=now + settings.upload_ttl_hours * 3600.0,
    )
    storage.put(upload.storage_key, data, content_type)
    return store.uploads.create(upload)


class StoredUploads:
    """The input fetcher's hook for this server's upload URLs (see
    :class:`imagegate.media.inputs.OwnInputs`)."""

    def __init__(self, store: JobStore, storage: Storage, settings: Settings) -> None:
        self.store = store
        self.storage = storage
        self.prefix = upload_url(settings.base_url, "")

    def read(self, url: str, *, field: str, key_id: str | None) -> bytes | None:
        if not url.startswith(self.prefix):
            return None
        upload_id = url[len(self.prefix) :]
        upload = self.store.uploads.get(upload_id) if upload_id and "/" not in upload_id else None
        if upload is None or not upload.readable_by(key_id):
            raise InputError(field, f"could not read {url}: no such upload for this key (uploads are private to their key and expire)")
        try:
            data, _content_type = self.storage.get(upload.storage_key)
        except KeyError as exc:
            raise InputError(field, f"could not read {url}: the uploaded file is gone") from exc
        return data


def purge_expired_uploads(store: JobStore, storage: Storage, now: float | None = None) -> int:
    """Delete expired uploads (their files, then their rows); returns how many. A storage
    failure leaves the upload for the next sweep."""
    purged = 0
    while batch := store.uploads.expired(now):
        done = []
        for upload in batch:
            try:
                storage.delete(upload.storage_key)
            except StorageError as exc:
                log.warning("upload %s: file not deleted yet (%s)", upload.id, exc)
                continue
            done.append(upload.id)
        store.uploads.delete(done)
        purged += len(done)
        if len(done) < len(batch):
            break  # the rest failed: try again at the next sweep rather than spin on them
    return purged
