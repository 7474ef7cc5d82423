"""Fetching user-supplied inputs (http, https, data: URIs) without becoming an SSRF proxy.

Every connection goes through :mod:`imagegate.network`: the host is resolved by the fetcher, every
answer judged by the address policy, and the connection made to exactly the address that was
checked (no DNS rebinding), with TLS still verified against the host name. Redirects are followed
by hand so that every hop goes through the same policy and the same overall deadline.
"""

from __future__ import annotations

import base64
import binascii
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

import httpx
from PIL import Image

from imagegate.exceptions import InputError, OutboundRefusedError, ValidationError
from imagegate.media.codecs import decode_image, decode_mask
from imagegate.network import AddressPolicy, guarded_client

if TYPE_CHECKING:
    from imagegate.config import Settings

MAX_URL_LENGTH = 8192
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "imagegate-fetcher/0.1"


# ---------------------------------------------------------------------------------------------
# Syntax check (API side) and the fetcher (worker side)


def check_url(url: str, *, field: str, allow_data: bool = True) -> None:
    """Check that ``url`` is syntactically usable, without any network access.

    Raises :class:`ValidationError` so that the API can refuse a request before it is queued.
    """
    expected = "an http, https or data: URL" if allow_data else "an http or https URL"
    if not isinstance(url, str) or not url.strip():
        raise ValidationError(field, f"must be {expected}")
    scheme = _scheme(url)
    if scheme == "data":
        if not allow_data:
            raise ValidationError(field, f"must be {expected}; data: URIs are not accepted here")
        if "," not in url:
            raise ValidationError(field, "is not a valid data: URI (no ',' before the data)")
        return
    if scheme not in _DEFAULT_PORTS:
        raise ValidationError(field, f"must be {expected}")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(field, f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValidationError(field, "URL contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise ValidationError(field, "is not a valid URL") from None
    if not parsed.raw_host:
        raise ValidationError(field, "URL has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValidationError(field, "is not a valid URL")


def _scheme(url: str) -> str:
    head, sep, _ = url.partition(":")
    return head.strip().lower() if sep else ""


def _display(url: str | httpx.URL) -> str:
    # Messages end up in job records and API responses: keep them short and drop credentials.
    text = str(url)
    try:
        parsed = urllib.parse.urlsplit(text)
        if parsed.username is not None or parsed.password is not None:
            text = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
    except ValueError:
        pass
    return text if len(text) <= 200 else text[:197] + "..."


def size_text(n: int) -> str:
    """A byte count as a limit is written: "25 MB", "256 KB", "1000 bytes"."""
    mib = 1024 * 1024
    if n % mib == 0:
        return f"{n // mib} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# This server's own URLs (uploads): read where they are stored, on behalf of the job's key


class OwnInputs(Protocol):
    def read(self, url: str, *, field: str, key_id: str | None) -> bytes | None:
        """The bytes behind one of this server's own input URLs, if ``url`` is one (else None);
        InputError when ``key_id`` may not read it."""


_on_behalf_of: ContextVar[str | None] = ContextVar("imagegate_input_key", default=None)


class InputFetcher:
    """Fetches user-supplied inputs for the worker, bounded in size, pixels and time.

    ``allow_networks`` lists internal ranges an operator trusts even with ``allow_private``
    off (e.g. an in-cluster object store), as CIDR strings such as ``"10.1.2.0/24"``.
    """

    def __init__(
        self,
        allow_private: bool = False,
        max_bytes: int = 25 * 1024 * 1024,
        max_pixels: int = 40_000_000,
        timeout: float = 20.0,
        *,
        allow_networks: Iterable[str] = (),
    ) -> None:
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.policy = AddressPolicy.with_networks(allow_private, allow_networks)
        self._ssl_context: ssl.SSLContext | None = None
        self.own_inputs: OwnInputs | None = None

    @contextmanager
    def on_behalf_of(self, key_id: str) -> Iterator[None]:
        """Fetches inside the block read own inputs (uploads) as ``key_id``."""
        token = _on_behalf_of.set(key_id)
        try:
            yield
        finally:
            _on_behalf_of.reset(token)

    def __repr__(self) -> str:
        return (
            f"InputFetcher(allow_private={self.allow_private}, max_bytes={self.max_bytes}, "
            f"max_pixels={self.max_pixels}, timeout={self.timeout})"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> InputFetcher:
        return cls(
            allow_private=settings.allow_private_urls,
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
            timeout=settings.fetch_timeout_seconds,
        )

    def fetch_image(self, url: str, *, field: str) -> Image.Image:
        """Fetch and decode an image; RGB, pixels loaded."""
        return decode_image(self.fetch_bytes(url, field=field), field=field, max_pixels=self.max_pixels)

    def fetch_mask(self, url: str, *, field: str) -> Image.Image:
        """Fetch and decode a mask; mode "L", pixels loaded."""
        return decode_mask(self.fetch_bytes(url, field=field), field=field, max_pixels=self.max_pixels)

    def fetch_bytes(self, url: str, *, field: str) -> bytes:
        """The raw bytes behind an http(s) URL or a data: URI; every failure is InputError."""
        if not isinstance(url, str) or not url.strip():
            raise InputError(field, "is empty; expected an http(s) URL or a data: URI")
        if self.own_inputs is not None:
            own = self.own_inputs.read(url.strip(), field=field, key_id=_on_behalf_of.get())
            if own is not None:
                return own
        scheme = _scheme(url)
        if scheme == "data":
            return self._decode_data_uri(url, field)
        if scheme in _DEFAULT_PORTS:
            return self._fetch_http(url.strip(), field)
        raise InputError(field, f"unsupported URL scheme {scheme or '(none)'!r}; expected http, https or data")

    # -- data: URIs -------------------------------------------------------------------------

    def _decode_data_uri(self, url: str, field: str) -> bytes:
        header, sep, payload = url.strip()[len("data:") :].partition(",")
        if not sep:
            raise InputError(field, "is not a valid data: URI (no ',' before the data)")
        too_large = InputError(field, f"input is larger than the {size_text(self.max_bytes)} limit")
        is_base64 = header.strip().lower().endswith(";base64")
        # Cheap refusal before copying anything: no encoding spends more than four characters
        # per byte (base64's 4/3, each character then percent-encoded as three).
        if len(payload) > 4 * self.max_bytes + 16:
            raise too_large
        if is_base64:
            try:
                raw = urllib.parse.unquote_to_bytes(payload) if "%" in payload else payload.encode("ascii")
            except UnicodeEncodeError:
                raise InputError(field, "data: URI is not valid base64") from None
            raw = raw.translate(None, b" \t\r\n")
            if b"-" in raw or b"_" in raw:  # the URL-safe alphabet, which some clients send
                raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
            if len(raw) // 4 * 3 > self.max_bytes + 3:
                raise too_large
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError(field, "data: URI is not valid base64") from exc
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > self.max_bytes:
            raise too_large
        if not data:
            raise InputError(field, "data: URI holds no data")
        return data

    # -- http(s) ----------------------------------------------------------------------------

    def _fetch_http(self, url: str, field: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        if self._ssl_context is None:
            # Honours SSL_CERT_FILE / SSL_CERT_DIR, else certifi's bundle.
            self._ssl_context = httpx.create_ssl_context(trust_env=True)
        headers = {"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
        with guarded_client(
            self.policy, timeout=self.timeout, deadline=deadline, ssl_context=self._ssl_context, headers=headers
        ) as client:
            target = self._parse_http_url(url, field, original=url)
            for hop in range(MAX_REDIRECTS + 1):
                context = f"could not fetch {_display(url)}"
                if hop:
                    context += f" (redirected to {_display(target)})"
                try:
                    with client.stream("GET", target) as response:
                        if response.status_code not in _REDIRECT_STATUSES:
                            if not 200 <= response.status_code < 300:
                                raise InputError(field, f"{context}: HTTP {response.status_code}")
                            return self._read_body(response, field, context)
                        location = response.headers.get("location")
                        if not location:
                            raise InputError(field, f"{context}: HTTP {response.status_code} without a Location")
                        try:
                            next_url = response.url.join(location)
                        except (httpx.InvalidURL, ValueError):
                            raise InputError(field, f"{context}: redirect to an invalid URL") from None
                except OutboundRefusedError as exc:
                    prefix = f"redirect to {_display(target)} refused: " if hop else ""
                    raise InputError(field, prefix + exc.message) from exc
                except httpx.InvalidURL as exc:
                    # httpx parses every Location (to offer response.next_request) before we
                    # see the response; one it cannot parse ends the fetch here.
                    raise InputError(field, f"{context}: redirected to an invalid or unsupported URL") from exc
                except httpx.TimeoutException as exc:
                    raise InputError(field, f"{context}: no complete answer within {self.timeout:g} s") from exc
                except (httpx.HTTPError, httpx.StreamError) as exc:
                    raise InputError(field, f"{context}: {_network_reason(exc)}") from exc
                target = self._parse_http_url(str(next_url), field, original=url)
        raise InputError(field, f"could not fetch {_display(url)}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _parse_http_url(url: str, field: str, *, original: str) -> httpx.URL:
        where = "" if url == original else f" (redirected to {_display(url)})"
        if _scheme(url) not in _DEFAULT_PORTS:
            raise InputError(
                field, f"could not fetch {_display(original)}{where}: only http and https URLs are followed"
            )
        if len(url) > MAX_URL_LENGTH:
            raise InputError(field, f"URL is longer than {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise InputError(field, f"{_display(url)} is not a valid URL") from exc
        if not parsed.raw_host:
            raise InputError(field, f"{_display(url)} has no host")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise InputError(field, f"{_display(url)} is not a valid URL")
        return parsed

    def _read_body(self, response: httpx.Response, field: str, context: str) -> bytes:
        too_large = InputError(field, f"input is larger than the {size_text(self.max_bytes)} limit")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        # The declared length is only a hint: count what actually arrives.
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise too_large
        if not body:
            raise InputError(field, f"{context}: the response body is empty")
        return bytes(body)


def _network_reason(exc: Exception) -> str:
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({text})" if text else "connection failed"
    return text or type(exc).__name__
