"""Fetching user-supplied images (http, https, data: URIs) without becoming an SSRF proxy.

Every TCP connection the fetcher opens goes through :class:`_GuardedBackend`, which resolves
the host itself, refuses non-public addresses and then connects to exactly the address it
checked, so there is no window for DNS rebinding between the check and the connect. TLS still
verifies the certificate against the host name (SNI and Host are the name, not the IP).
Redirects are followed by hand so that every hop goes through the same guard and the same
overall deadline.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpcore
import httpx
from PIL import Image

from imagegate.exceptions import InputError, ValidationError
from imagegate.media.codecs import decode_image, decode_mask

if TYPE_CHECKING:
    from imagegate.config import Settings

MAX_URL_LENGTH = 8192
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "imagegate-fetcher/0.1"

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges Python's ipaddress does not flag on every supported version.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class _GuardError(Exception):
    """An address was refused or could not be resolved; turned into InputError at the edge."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# Address guard


@dataclass(frozen=True)
class _AddressGuard:
    allow_private: bool = False
    allow_networks: tuple[_Network, ...] = ()

    def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """Every address ``host`` resolves to, all of them checked; raises _GuardError."""
        host = host.strip("[]")
        try:
            literal: _IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        addresses = [str(literal)] if literal is not None else _getaddrinfo(host, port, timeout)
        # Refuse when *any* answer is internal: a name that mixes public and internal answers
        # is either misconfigured or an attack, and connecting to the public one would hide it.
        for address in addresses:
            self.check(address)
        return addresses

    def check(self, address: str) -> None:
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return
        for candidate in _addresses_to_judge(ip):
            reason = _refusal_reason(candidate)
            if reason is not None:
                shown = address if candidate == ip else f"{address} ({candidate})"
                raise _GuardError(f"address {shown} is {reason}; such URLs are refused")


def _refusal_reason(ip: _IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "private or loopback"
    if ip.is_link_local:
        return "link-local (where cloud metadata services live)" if ip.version == 4 else "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 4 and ip in _CGNAT:
        return "in the carrier-grade NAT range"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or (ip.version == 6 and ip.is_site_local):
        return "private or loopback"
    if not ip.is_global:
        return "not a public address"
    return None


def _addresses_to_judge(ip: _IPAddress) -> list[_IPAddress]:
    """The addresses a connection to ``ip`` really reaches: ``::ffff:127.0.0.1`` must be as
    loopback as ``127.0.0.1``. Mapped and NAT64 addresses are pure translations, so only the
    IPv4 side counts; 6to4 and Teredo tunnels count both ends."""
    if ip.version != 6:
        return [ip]
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    judged: list[_IPAddress] = [ip]
    if ip.sixtofour is not None:
        judged.append(ip.sixtofour)
    if ip.teredo is not None:
        judged.extend(ip.teredo)
    return judged


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[str]:
    # getaddrinfo has no timeout of its own; a daemon thread keeps a stuck resolver from
    # holding the fetch (or interpreter exit) past the deadline.
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="imagegate-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise _GuardError(f"could not resolve host {host}: no answer in time")
    if "error" in outcome:
        raise _GuardError(f"could not resolve host {host}") from outcome["error"]
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in outcome["infos"]:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _GuardError(f"could not resolve host {host}")
    return addresses


def _parse_networks(networks: Iterable[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def resolve_public_addresses(
    host: str,
    port: int,
    *,
    allow_private: bool,
    timeout: float | None = 10.0,
    allow_networks: Iterable[str] = (),
) -> list[str]:
    """Resolve ``host`` and return its addresses, in resolver order, all safe to connect to.

    Raises ``InputError(field="url")`` when the host does not resolve or any of its addresses
    is loopback, private, link-local, multicast, reserved or otherwise not public (unless
    ``allow_private``). Connect to a returned address, not to the name, or a second lookup
    may answer differently.
    """
    guard = _AddressGuard(allow_private, _parse_networks(allow_networks))
    try:
        return guard.resolve(host, port, timeout)
    except _GuardError as exc:
        raise InputError("url", exc.message) from exc


# ---------------------------------------------------------------------------------------------
# Pinned, deadline-bound transport


class _DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket operation to what is left of the overall deadline, so a server
    that drips one byte just inside each read timeout cannot stretch the fetch."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float | None) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _clamp(timeout, self._deadline, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _clamp(timeout: float | None, deadline: float | None, error: type[Exception]) -> float | None:
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the overall deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host on every connect, then dials the checked address only."""

    def __init__(self, guard: _AddressGuard, deadline: float | None) -> None:
        self._guard = guard
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._guard.resolve(host, port, _clamp(timeout, self._deadline, httpcore.ConnectTimeout))
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=_clamp(timeout, self._deadline, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:  # refused or unreachable: try the next answer
                last_error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert last_error is not None
        raise last_error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never dialled for user-supplied URLs")


# httpcore's exceptions, as the httpx ones that callers of an httpx client expect. Most
# specific first: the first match wins.
_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except tuple(core for core, _ in _HTTPCORE_TO_HTTPX) as exc:
        mapped = next(ours for core, ours in _HTTPCORE_TO_HTTPX if isinstance(exc, core))
        raise mapped(str(exc) or type(exc).__name__, request=request) from exc


class _CoreResponseStream(httpx.SyncByteStream):
    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors(self._request):
            yield from self._response.stream  # type: ignore[misc]

    def close(self) -> None:
        self._response.close()


class _GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that dials through :class:`_GuardedBackend`.

    ``refusal_field`` set: guard refusals surface as InputError for that field; unset, they
    surface as _GuardError for the caller to put in context.
    """

    def __init__(
        self, backend: _GuardedBackend, ssl_context: ssl.SSLContext, *, refusal_field: str | None = None
    ) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, retries=0)
        self._refusal_field = refusal_field

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            with _httpx_errors(request):
                core_response = self._pool.handle_request(core_request)
        except _GuardError as exc:
            if self._refusal_field is None:
                raise
            raise InputError(self._refusal_field, exc.message) from exc
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_CoreResponseStream(core_response, request),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def guarded_client(*, allow_private: bool, timeout: float, allow_networks: Iterable[str] = ()) -> httpx.Client:
    """An httpx client whose every connection passes the same guard as input fetching.

    For outbound calls to user-chosen URLs (webhooks). Redirects are not followed and proxies
    from the environment are ignored (a proxy would bypass the guard). A refused or
    unresolvable host raises ``InputError(field="url")``; network failures raise the usual
    ``httpx`` exceptions.
    """
    backend = _GuardedBackend(_AddressGuard(allow_private, _parse_networks(allow_networks)), None)
    transport = _GuardedTransport(backend, httpx.create_ssl_context(trust_env=True), refusal_field="url")
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False, timeout=timeout)


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


def _size_text(n: int) -> str:
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
        self._guard = _AddressGuard(allow_private, _parse_networks(allow_networks))
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
        too_large = InputError(field, f"input is larger than the {_size_text(self.max_bytes)} limit")
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
        transport = _GuardedTransport(_GuardedBackend(self._guard, deadline), self._ssl_context)
        headers = {"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
        with httpx.Client(
            transport=transport, trust_env=False, follow_redirects=False, timeout=self.timeout, headers=headers
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
                except _GuardError as exc:
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
        too_large = InputError(field, f"input is larger than the {_size_text(self.max_bytes)} limit")
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
