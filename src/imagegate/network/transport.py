"""The one httpx transport for client-chosen URLs: checked, pinned and bound by a deadline.

Every TCP connection goes through :class:`_PinnedBackend`, which resolves the host itself (with a
timeout), lets the :class:`~imagegate.network.addresses.AddressPolicy` judge every answer, and
then connects to exactly the addresses it checked, so there is no window for DNS rebinding
between the check and the connect. TLS still verifies the certificate against the host name
(SNI and Host are the name, not the IP). Each socket operation gets at most what is left of the
overall deadline, so a server that drips its answer cannot stretch a request. Redirects are
never followed here (callers that follow them do it by hand, through this transport again), and
proxies from the environment are ignored (a proxy would bypass the policy).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from imagegate.network.addresses import AddressPolicy


class _DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket operation to what is left of the deadline."""

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


class _PinnedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host on every connect, then dials the checked addresses only: each
    in turn until one connects, each with an equal share of the time left."""

    def __init__(self, policy: AddressPolicy, deadline: float | None) -> None:
        self._policy = policy
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
        addresses = self._policy.resolve(host, port, _clamp(timeout, self._deadline, httpcore.ConnectTimeout))
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for index, address in enumerate(addresses):
            left = _clamp(timeout, self._deadline, httpcore.ConnectTimeout)
            share = None if left is None else left / (len(addresses) - index)
            try:
                stream = self._inner.connect_tcp(
                    address, port, timeout=share, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:  # try the next answer
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never dialled for client-chosen URLs")


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


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport whose every connection the policy has checked and which ends at
    ``deadline`` (``time.monotonic()`` based; None: only the client's per-operation timeouts).

    A refused target raises :class:`~imagegate.exceptions.AddressRefusedError`, a name that does
    not resolve :class:`~imagegate.exceptions.UnresolvableHostError`, before any connection is
    made; network failures raise the usual httpx exceptions.
    """

    def __init__(
        self, policy: AddressPolicy, *, deadline: float | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # Honours SSL_CERT_FILE / SSL_CERT_DIR, else certifi's bundle.
        context = ssl_context or httpx.create_ssl_context(trust_env=True)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context, network_backend=_PinnedBackend(policy, deadline), retries=0
        )

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
        with _httpx_errors(request):
            core_response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_CoreResponseStream(core_response, request),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def guarded_client(
    policy: AddressPolicy,
    *,
    timeout: float,
    deadline: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client over :class:`GuardedTransport`: no redirects, no proxies from the
    environment, ``timeout`` per operation and ``deadline`` for everything."""
    transport = GuardedTransport(policy, deadline=deadline, ssl_context=ssl_context)
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False, timeout=timeout, headers=headers)
