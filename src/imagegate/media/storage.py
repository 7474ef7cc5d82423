"""Where generated images live: a local directory or an S3-compatible bucket.

Keys are relative, slash-separated paths that the caller generates (they carry an unguessable
token, which is what makes the media URLs private). Both backends refuse keys that could
escape their root, so a key can never name anything outside the store.

Each backend also makes the URLs clients download media from (:meth:`Storage.public_url`): local
files are served by the API under :data:`MEDIA_PATH`; S3 objects are downloaded from the bucket
itself, through presigned GET URLs or a public origin (a CDN) in front of it, never through the API.
"""

from __future__ import annotations

import mimetypes
import os
import re
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from imagegate.config import DEFAULT_PRESIGN_SECONDS, MAX_PRESIGN_SECONDS, Settings
from imagegate.exceptions import StorageError

MAX_KEY_LENGTH = 1024
# One path segment: URL-safe characters (token_urlsafe output included), never starting with a
# dot, which rules out ".", "..", hidden files and LocalStorage's own dot-file sidecars.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~=+-]*")
_DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Where the API serves local media: GET {base_url}/media/{key}.
MEDIA_PATH = "/media"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key is longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} is absolute; keys are relative paths")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage key {key!r} has an empty, '.' or '..' segment")
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"storage key {key!r} has a segment that starts with '.' or has characters outside [A-Za-z0-9._~=+-]"
            )
    return key


def is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except ValueError:
        return False
    return True


@runtime_checkable
class Storage(Protocol):
    """The contract both backends keep.

    ``put`` overwrites; ``get`` raises KeyError for a missing key (and for a key that could
    never exist, such as ``../x``, so that a request path can be passed straight through);
    ``delete`` of a missing key is not an error; invalid keys passed to ``put``/``delete``/
    ``public_url`` raise ValueError. Failures of the backend itself raise StorageError.

    ``public_url`` is where a client downloads the object; ``served_by_api`` says whether that is
    the API's own media route (which then serves the bytes) or somewhere else (which the media route
    then redirects to).
    """

    served_by_api: ClassVar[bool]

    def public_url(self, key: str, base_url: str) -> str: ...

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> tuple[bytes, str]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


def _content_type_from_key(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key, strict=False)
    if guessed is None and key.lower().endswith(".avif"):  # missing from older mimetypes tables
        guessed = "image/avif"
    return guessed or _DEFAULT_CONTENT_TYPE


class LocalStorage:
    """Files under ``root``; the content type is kept in a hidden sidecar file beside each one."""

    served_by_api = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key).split("/"))
        # validate_key already rules out "..", this also rules out symlinks planted inside root.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} resolves outside the storage root")
        return path

    def public_url(self, key: str, base_url: str) -> str:
        return f"{base_url}{MEDIA_PATH}/{validate_key(key)}"

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.content-type")

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Sidecar first: a reader that sees the new data also sees its type. A crash in
            # between leaves the old data with the new type, never a torn file.
            _atomic_write(self._sidecar(path), content_type.encode("utf-8"))
            _atomic_write(path, data)
        except OSError as exc:
            raise StorageError(f"could not store {key!r} under {self.root}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> tuple[bytes, str]:
        if not is_valid_key(key):
            raise KeyError(key)
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise StorageError(f"could not read {key!r} under {self.root}: {exc.strerror or exc}") from exc
        try:
            content_type = self._sidecar(path).read_text("utf-8").strip()
        except FileNotFoundError:
            content_type = ""
        except OSError as exc:
            raise StorageError(f"could not read the type of {key!r} under {self.root}: {exc.strerror or exc}") from exc
        return data, content_type or _content_type_from_key(key)

    def exists(self, key: str) -> bool:
        return is_valid_key(key) and self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):
            return  # a prefix of the key is a file, or the key is a "directory": nothing stored
        except OSError as exc:
            raise StorageError(f"could not delete {key!r} under {self.root}: {exc.strerror or exc}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # Without the fsync, a crash soon after the rename can leave an empty file.
            os.fsync(fh.fileno())
        # mkstemp creates 0600; outputs are meant to be served, possibly by another user (nginx).
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class S3Storage:
    """Objects in an S3-compatible bucket, under an optional key prefix.

    Credentials default to boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    profiles, instance roles).

    Clients download objects from the bucket: ``public_url`` is ``{public_base_url}/{object key}``
    when a public origin (a CDN in front of the bucket) is configured, else a presigned GET URL
    valid for ``presign_seconds``. Presigning is local (an HMAC over the URL, no request), and the
    URL names ``presign_endpoint_url`` when given: the address clients reach the S3 server at,
    where imagegate reaches it at ``endpoint_url`` (a container network name, say). The host is
    part of what is signed, so it cannot be rewritten afterwards.
    """

    served_by_api = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        presign_endpoint_url: str | None = None,
        presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
        public_base_url: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        if not 1 <= presign_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presign_seconds must be between 1 and {MAX_PRESIGN_SECONDS} (7 days), got {presign_seconds}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.presign_endpoint_url = presign_endpoint_url or endpoint_url
        self.presign_seconds = presign_seconds
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._access_key = access_key
        self._secret_key = secret_key
        self._lock = threading.Lock()
        self._clients_pid: int | None = None
        self._clients: dict[str | None, Any] = {}

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def _client(self, *, signer: bool = False) -> Any:
        """The client for ``endpoint_url`` (``presign_endpoint_url`` for the signer), one per process."""
        endpoint_url = self.presign_endpoint_url if signer else self.endpoint_url
        # boto3 clients are thread-safe but not fork-safe (pooled sockets): the storage object
        # may be built in the API process and used in forked workers, so one client per pid.
        with self._lock:
            if self._clients_pid != os.getpid():
                self._clients, self._clients_pid = {}, os.getpid()
            client = self._clients.get(endpoint_url)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    # SigV4 explicitly: presigned URLs of the older scheme are refused by some servers.
                    signature_version="s3v4",
                    # Self-hosted S3 servers (SeaweedFS, MinIO) rarely do virtual-host buckets.
                    s3={"addressing_style": "path"} if endpoint_url else {},
                )
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=self._access_key,
                    aws_secret_access_key=self._secret_key,
                    config=config,
                )
                self._clients[endpoint_url] = client
            return client

    def public_url(self, key: str, base_url: str) -> str:
        object_key = self.prefix + validate_key(key)
        if self.public_base_url:
            # "+" and "=" are legal in keys but not safe in every origin's paths.
            return f"{self.public_base_url}/{urllib.parse.quote(object_key, safe='/~')}"
        try:
            return str(
                self._client(signer=True).generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=self.presign_seconds
                )
            )
        except _boto_errors() as exc:
            raise StorageError(f"could not presign a URL for {self._where(key)}: {_describe(exc)}") from exc

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self.prefix + validate_key(key)
        try:
            self._client().put_object(Bucket=self.bucket, Key=object_key, Body=data, ContentType=content_type)
        except _boto_errors() as exc:
            raise StorageError(f"could not store {self._where(key)}: {_describe(exc)}") from exc

    def get(self, key: str) -> tuple[bytes, str]:
        if not is_valid_key(key):
            raise KeyError(key)
        try:
            response = self._client().get_object(Bucket=self.bucket, Key=self.prefix + key)
            data = response["Body"].read()
        except _boto_errors() as exc:
            if _is_not_found(exc):
                raise KeyError(key) from None
            raise StorageError(f"could not read {self._where(key)}: {_describe(exc)}") from exc
        content_type = response.get("ContentType") or ""
        if not content_type or content_type == "binary/octet-stream":  # S3's default when unset
            content_type = _content_type_from_key(key)
        return data, content_type

    def exists(self, key: str) -> bool:
        if not is_valid_key(key):
            return False
        try:
            self._client().head_object(Bucket=self.bucket, Key=self.prefix + key)
        except _boto_errors() as exc:
            if _is_not_found(exc):
                return False
            raise StorageError(f"could not look up {self._where(key)}: {_describe(exc)}") from exc
        return True

    def delete(self, key: str) -> None:
        object_key = self.prefix + validate_key(key)
        try:
            self._client().delete_object(Bucket=self.bucket, Key=object_key)
        except _boto_errors() as exc:
            if _is_not_found(exc):
                return
            raise StorageError(f"could not delete {self._where(key)}: {_describe(exc)}") from exc


def _boto_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def _describe(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response:
        error = response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        return f"{code}: {message}" if message else str(code or exc)
    return str(exc)


S3_URL_OPTIONS = ("endpoint_url", "region", "presign_endpoint_url")


def open_storage(
    url: str, *, presign_seconds: int = DEFAULT_PRESIGN_SECONDS, public_base_url: str | None = None
) -> Storage:
    """Open the store a URL names.

    ``file:///abs/path`` is a :class:`LocalStorage` (the path is taken literally, not
    percent-decoded, matching how ``Settings.resolved_storage_url`` builds it).
    ``s3://bucket/optional/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1`` is an
    :class:`S3Storage` (``presign_endpoint_url=`` names the S3 address clients reach, when it is not
    ``endpoint_url``); credentials come from the environment, never from the URL.
    ``presign_seconds`` and ``public_base_url`` shape S3 media URLs; local media are always served
    by the API.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"storage URL {url!r} has no scheme; expected file:///path or s3://bucket")
    if scheme == "file":
        # file:///abs -> "/abs"; file://localhost/abs -> "/abs"; file://relative is refused.
        path = rest[len("localhost") :] if rest.startswith("localhost/") else rest
        if not path.startswith("/"):
            raise ValueError(f"storage URL {url!r} must name an absolute path (file:///abs/path)")
        return LocalStorage(Path(path))
    if scheme == "s3":
        parsed = urllib.parse.urlsplit(url)
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} has no bucket (s3://bucket/prefix)")
        options = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        unknown = set(options) - set(S3_URL_OPTIONS)
        if unknown:
            raise ValueError(
                f"storage URL {url!r} has unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(S3_URL_OPTIONS)} (credentials come from AWS_* variables)"
            )
        return S3Storage(
            bucket=parsed.netloc,
            prefix=urllib.parse.unquote(parsed.path),
            endpoint_url=options.get("endpoint_url") or None,
            region=options.get("region") or None,
            presign_endpoint_url=options.get("presign_endpoint_url") or None,
            presign_seconds=presign_seconds,
            public_base_url=public_base_url,
        )
    raise ValueError(f"storage URL {url!r} has unsupported scheme {scheme!r}; expected file or s3")


def storage_for(settings: Settings) -> Storage:
    """The store ``settings`` configure, with its media URL options."""
    return open_storage(
        settings.resolved_storage_url,
        presign_seconds=settings.s3_presign_seconds,
        public_base_url=settings.media_public_base_url,
    )
