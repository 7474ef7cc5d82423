"""The storage contract, run against LocalStorage and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagegate.config import MAX_PRESIGN_SECONDS
from imagegate.exceptions import StorageError
from imagegate.media.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    open_storage,
    storage_for,
    validate_key,
)

from .support import S3Server, unused_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "media")
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        prefix: str = request.getfixturevalue("s3_prefix")
        yield S3Storage(s3.bucket, prefix, s3.endpoint_url, "us-east-1", s3.access_key, s3.secret_key)


# --------------------------------------------------------------------------------------------
# The contract


def test_implements_the_protocol(store: Storage) -> None:
    assert isinstance(store, Storage)


def test_put_then_get(store: Storage) -> None:
    store.put("outputs/abc123/0.png", b"\x89PNG fake", "image/png")
    assert store.get("outputs/abc123/0.png") == (b"\x89PNG fake", "image/png")


def test_worker_shaped_keys(store: Storage) -> None:
    key = f"{secrets.token_urlsafe(18)}/_x-Job_01-0.webp"
    store.put(key, b"webp", "image/webp")
    assert store.get(key) == (b"webp", "image/webp")
    for token in ("-leading-dash", "_leading_underscore"):
        store.put(f"{token}/lora.safetensors", b"st", "application/octet-stream")
        assert store.exists(f"{token}/lora.safetensors")


def test_content_type_is_kept_not_guessed(store: Storage) -> None:
    store.put("outputs/t0k3n/image.png", b"RIFF....WEBP", "image/webp")
    assert store.get("outputs/t0k3n/image.png")[1] == "image/webp"


def test_put_overwrites(store: Storage) -> None:
    store.put("a/b.bin", b"first", "application/octet-stream")
    store.put("a/b.bin", b"second, longer", "image/jpeg")
    assert store.get("a/b.bin") == (b"second, longer", "image/jpeg")


def test_missing_key_raises_key_error(store: Storage) -> None:
    with pytest.raises(KeyError):
        store.get("outputs/never/written.png")
    assert store.exists("outputs/never/written.png") is False


def test_exists(store: Storage) -> None:
    assert not store.exists("x/y.png")
    store.put("x/y.png", b"1", "image/png")
    assert store.exists("x/y.png")
    # A "directory" is not an object, and neither is a key that only shares a prefix.
    assert not store.exists("x")
    assert not store.exists("x/y.pn")


def test_delete(store: Storage) -> None:
    store.put("d/1.png", b"one", "image/png")
    store.put("d/2.png", b"two", "image/png")
    store.delete("d/1.png")
    assert not store.exists("d/1.png")
    with pytest.raises(KeyError):
        store.get("d/1.png")
    assert store.get("d/2.png") == (b"two", "image/png")
    store.delete("d/1.png")  # deleting again is not an error
    store.delete("never/there.png")


def test_binary_content_round_trips_exactly(store: Storage) -> None:
    data = bytes(range(256)) * 4096 + os.urandom(5 * 1024 * 1024)  # ~6 MB, over S3 chunk sizes
    store.put("big/blob.bin", data, "application/octet-stream")
    got, content_type = store.get("big/blob.bin")
    assert got == data and content_type == "application/octet-stream"


def test_empty_object(store: Storage) -> None:
    store.put("empty.txt", b"", "text/plain")
    assert store.get("empty.txt") == (b"", "text/plain")


def test_nested_and_sibling_keys_are_independent(store: Storage) -> None:
    keys = ["n/a.png", "n/a.png2", "n/a/b.png", "n2/a.png"]
    for i, key in enumerate(keys):
        store.put(key, str(i).encode(), "image/png")
    for i, key in enumerate(keys):
        assert store.get(key)[0] == str(i).encode()


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape.png",
    "a/../../escape.png",
    "a/./b.png",
    "a//b.png",
    "a/b/",
    "a\\b.png",
    ".hidden",
    "a/.a.png.content-type",
    "nul\0byte",
    "x" * 1100,
    "spa ce.png",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(store: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        store.delete(key)
    # On the read side an unsafe key simply names nothing, so a request path can go straight in.
    with pytest.raises(KeyError):
        store.get(key)
    assert store.exists(key) is False


def test_validate_key() -> None:
    assert validate_key("outputs/2025/01/Zx_9-a.b~c=d+e.png") == "outputs/2025/01/Zx_9-a.b~c=d+e.png"
    # What the worker writes: a secrets.token_urlsafe() segment, which may start with - or _.
    assert validate_key("-Ab_cd/_job-0.png") == "-Ab_cd/_job-0.png"
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            validate_key(key)


# --------------------------------------------------------------------------------------------
# LocalStorage specifics


def test_local_layout_and_permissions(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put("o/tok/0.png", b"png", "image/png")
    path = tmp_path / "o" / "tok" / "0.png"
    assert path.read_bytes() == b"png"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # Only the file and its content-type sidecar; no temp files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [".0.png.content-type", "0.png"]


def test_local_content_type_falls_back_to_the_extension(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    for key, expected in [
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("a.unknownext", "application/octet-stream"),
    ]:
        (tmp_path / key).write_bytes(b"x")  # written by something else: no sidecar
        assert store.get(key) == (b"x", expected)


def test_local_readers_never_see_a_torn_write(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    size = 512 * 1024
    versions = [b"a" * size, b"b" * size]
    store.put("hot/key.bin", versions[0], "application/octet-stream")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.put("hot/key.bin", versions[i % 2], "application/octet-stream")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            data, _ = store.get("hot/key.bin")
            assert data in versions
    finally:
        stop.set()
        thread.join()


def test_local_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    store = LocalStorage(blocker / "media")
    with pytest.raises(StorageError, match=r"could not store 'k/0\.png'") as info:
        store.put("k/0.png", b"x", "image/png")
    assert isinstance(info.value.__cause__, OSError)


def test_local_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = LocalStorage(root)
    with pytest.raises(ValueError, match="outside the storage root"):
        store.put("link/evil.png", b"x", "image/png")
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------------------------
# S3Storage specifics


def test_s3_prefixes_are_isolated(s3_server: S3Server, s3_prefix: str) -> None:
    a = S3Storage(
        s3_server.bucket,
        f"{s3_prefix}/a",
        s3_server.endpoint_url,
        "us-east-1",
        s3_server.access_key,
        s3_server.secret_key,
    )
    b = S3Storage(
        s3_server.bucket,
        f"/{s3_prefix}/b/",
        s3_server.endpoint_url,
        "us-east-1",
        s3_server.access_key,
        s3_server.secret_key,
    )
    a.put("same/key.png", b"in a", "image/png")
    assert not b.exists("same/key.png")
    b.put("same/key.png", b"in b", "image/png")
    assert a.get("same/key.png")[0] == b"in a" and b.get("same/key.png")[0] == b"in b"


def test_s3_object_lands_under_the_prefix(s3_server: S3Server, s3_prefix: str) -> None:
    import boto3
    from botocore.config import Config

    store = S3Storage(
        s3_server.bucket, s3_prefix, s3_server.endpoint_url, "us-east-1", s3_server.access_key, s3_server.secret_key
    )
    store.put("o/1.png", b"data", "image/png")
    raw = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        config=Config(s3={"addressing_style": "path"}),
    )
    head = raw.head_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}/o/1.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == 4


def test_s3_bad_credentials_are_a_storage_error(s3_server: S3Server, s3_prefix: str) -> None:
    from botocore.exceptions import ClientError

    store = S3Storage(
        s3_server.bucket, s3_prefix, s3_server.endpoint_url, "us-east-1", s3_server.access_key, "wrong-secret"
    )
    with pytest.raises(StorageError, match=rf"could not store s3://{s3_server.bucket}/{s3_prefix}/k.png") as info:
        store.put("k.png", b"x", "image/png")
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(StorageError):
        store.get("k.png")


def test_s3_unreachable_endpoint_is_a_storage_error(s3_prefix: str) -> None:
    store = S3Storage("bucket", s3_prefix, f"http://127.0.0.1:{unused_port()}", "us-east-1", "k", "s")
    start = time.monotonic()
    with pytest.raises(StorageError, match="could not store"):
        store.put("k.png", b"x", "image/png")
    assert time.monotonic() - start < 15


def test_s3_credentials_default_to_the_environment(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    store = open_storage(f"s3://{s3_server.bucket}/{s3_prefix}?endpoint_url={s3_server.endpoint_url}&region=us-east-1")
    assert isinstance(store, S3Storage)
    store.put("env/0.png", b"via env", "image/png")
    assert store.get("env/0.png") == (b"via env", "image/png")


# --------------------------------------------------------------------------------------------
# open_storage


def test_open_storage_file_url(tmp_path: Path) -> None:
    store = open_storage(f"file://{tmp_path}/media")
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "media").resolve()
    store.put("k.png", b"x", "image/png")
    assert (tmp_path / "media" / "k.png").read_bytes() == b"x"
    assert open_storage(f"file://localhost{tmp_path}").root == tmp_path.resolve()  # type: ignore[attr-defined]


def test_open_storage_matches_the_settings_default(tmp_path: Path) -> None:
    from imagegate.config import Settings

    settings = Settings(data_dir=tmp_path / "data dir")
    store = open_storage(settings.resolved_storage_url)
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "data dir" / "media").resolve()


def test_open_storage_s3_url() -> None:
    store = open_storage("s3://my-bucket/some/prefix/?endpoint_url=http://127.0.0.1:8333&region=eu-west-1")
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        "my-bucket",
        "some/prefix/",
        "http://127.0.0.1:8333",
        "eu-west-1",
    )
    bare = open_storage("s3://bucket")
    assert isinstance(bare, S3Storage) and (bare.prefix, bare.endpoint_url, bare.region) == ("", None, None)


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/path",
        "/just/a/path",
        "http://example.com/media",
        "s3://",
        "s3://bucket?access_key=AKIA",
        "s3://bucket?endpoint=http://x",
        "s3://bucket?public_base_url=https://cdn.example.com",
    ],
)
def test_open_storage_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        open_storage(url)


def test_open_storage_s3_presign_endpoint_option() -> None:
    store = open_storage("s3://b/p?endpoint_url=http://s3:8333&presign_endpoint_url=http://localhost:8333")
    assert isinstance(store, S3Storage)
    assert (store.endpoint_url, store.presign_endpoint_url) == ("http://s3:8333", "http://localhost:8333")
    assert open_storage("s3://b?endpoint_url=http://s3:8333").presign_endpoint_url == "http://s3:8333"  # type: ignore[attr-defined]


def test_storage_for_applies_the_media_url_settings(tmp_path: Path) -> None:
    from imagegate.config import Settings

    s3 = storage_for(
        Settings(
            storage_url="s3://bucket/media?endpoint_url=http://127.0.0.1:8333",
            s3_presign_seconds=600,
            media_public_base_url="https://cdn.example.com/",
        )
    )
    assert isinstance(s3, S3Storage)
    assert (s3.presign_seconds, s3.public_base_url) == (600, "https://cdn.example.com")
    assert isinstance(storage_for(Settings(data_dir=tmp_path)), LocalStorage)


# --------------------------------------------------------------------------------------------
# Media URLs: the API for local files, the bucket itself (presigned or behind a CDN) for S3


def s3_storage(s3: S3Server, prefix: str, **options: object) -> S3Storage:
    return S3Storage(s3.bucket, prefix, s3.endpoint_url, "us-east-1", s3.access_key, s3.secret_key, **options)  # type: ignore[arg-type]


def test_local_media_are_served_by_the_api(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert store.served_by_api
    assert store.public_url("tok/job-0.png", "https://api.example.com") == "https://api.example.com/media/tok/job-0.png"
    with pytest.raises(ValueError):
        store.public_url("../etc/passwd", "https://api.example.com")


def test_presigned_url_downloads_the_object(s3_server: S3Server, s3_prefix: str) -> None:
    store = s3_storage(s3_server, s3_prefix, presign_seconds=900)
    assert not store.served_by_api
    store.put("tok/job-0.png", b"\x89PNG pixels", "image/png")
    url = store.public_url("tok/job-0.png", "https://api.example.com")
    assert url.startswith(f"{s3_server.endpoint_url}/{s3_server.bucket}/{s3_prefix}/tok/job-0.png?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=900" in url
    r = httpx.get(url)
    assert r.status_code == 200, r.text
    assert (r.content, r.headers["content-type"]) == (b"\x89PNG pixels", "image/png")


def test_the_s3_server_refuses_unsigned_requests(s3_server: S3Server, s3_prefix: str) -> None:
    # What makes the refusals below mean something: the bucket is not public.
    store = s3_storage(s3_server, s3_prefix)
    store.put("tok/private.png", b"secret", "image/png")
    r = httpx.get(f"{s3_server.endpoint_url}/{s3_server.bucket}/{s3_prefix}/tok/private.png")
    assert r.status_code == 403 and b"AccessDenied" in r.content


def test_tampered_presigned_urls_are_refused(s3_server: S3Server, s3_prefix: str) -> None:
    store = s3_storage(s3_server, s3_prefix, presign_seconds=60)
    store.put("tok/mine.png", b"mine", "image/png")
    store.put("tok/other.png", b"other", "image/png")  # exists: a refusal is not a 404
    url = store.public_url("tok/mine.png", "")
    assert httpx.get(url).status_code == 200
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    tampered = {
        "another key": url.replace("tok/mine.png", "tok/other.png"),
        "a longer lifetime": url.replace("X-Amz-Expires=60", "X-Amz-Expires=604800"),
        "another signature": url.replace(signature, signature[::-1]),
    }
    for what, bad in tampered.items():
        assert bad != url
        r = httpx.get(bad)
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text}"
        assert b"SignatureDoesNotMatch" in r.content or b"AccessDenied" in r.content, what


def test_expired_presigned_url_is_refused(s3_server: S3Server, s3_prefix: str) -> None:
    store = s3_storage(s3_server, s3_prefix, presign_seconds=1)
    store.put("tok/brief.png", b"brief", "image/png")
    url = store.public_url("tok/brief.png", "")
    assert httpx.get(url).status_code == 200
    time.sleep(2.2)
    r = httpx.get(url)
    assert r.status_code == 403 and b"expired" in r.content.lower()
    # A URL signed now works again: the object is there, only that URL expired.
    assert httpx.get(store.public_url("tok/brief.png", "")).status_code == 200


def test_presigned_urls_name_the_address_clients_reach(s3_server: S3Server, s3_prefix: str) -> None:
    # imagegate talks to 127.0.0.1; clients are given "localhost" (a container name vs. a public
    # name, in a real deployment). The host is signed, so it must be right when signing.
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    store = s3_storage(s3_server, s3_prefix, presign_endpoint_url=public)
    store.put("tok/0.webp", b"webp", "image/webp")
    url = store.public_url("tok/0.webp", "")
    assert url.startswith(f"{public}/{s3_server.bucket}/")
    r = httpx.get(url)
    assert (r.status_code, r.content) == (200, b"webp")
    assert httpx.get(url.replace("localhost", "127.0.0.1")).status_code == 403


def test_public_base_url_replaces_presigning(s3_prefix: str) -> None:
    # No S3 server: URLs under a public origin are made without any request or credential.
    store = S3Storage("bucket", s3_prefix, "http://127.0.0.1:1", public_base_url="https://cdn.example.com/m/")
    url = store.public_url("tok/job_01+x=1-0.png", "https://api.example.com")
    assert url == f"https://cdn.example.com/m/{s3_prefix}/tok/job_01%2Bx%3D1-0.png"


def test_presigning_without_credentials_is_a_storage_error(s3_prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata address
    store = S3Storage("bucket", s3_prefix, "http://127.0.0.1:1")
    with pytest.raises(StorageError, match=rf"could not presign a URL for s3://bucket/{s3_prefix}/tok/0.png"):
        store.public_url("tok/0.png", "")


@pytest.mark.parametrize("seconds", [0, MAX_PRESIGN_SECONDS + 1])
def test_presign_lifetime_is_bounded(seconds: int) -> None:
    with pytest.raises(ValueError, match="presign_seconds"):
        S3Storage("bucket", presign_seconds=seconds)
