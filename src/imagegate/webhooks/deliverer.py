"""Sends the outbox's events: concurrent, signed, retried, and never to a private address.

Each attempt resolves the target's host, refuses non-public answers (loopback only when
``allow_http_webhooks`` is on, for development), and connects to exactly the address it
checked, with the URL's host name kept for the Host header, SNI and certificate checks, so DNS
rebinding cannot turn a webhook into a request to an internal service.

Retry schedule (see :class:`RetryPolicy`): terminal events are retried with exponential backoff
and jitter until their ``deliver_until`` (``webhook_retry_hours`` after the event, 25 h by
default); intermediate events get a few attempts within a short window. ``Retry-After`` is
honoured, and 410 Gone stops every further delivery for that request.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import httpcore
import httpx

from imagegate.config import Settings
from imagegate.exceptions import InputError, ValidationError
from imagegate.jobs.queue import Job
from imagegate.jobs.store import JobStore
from imagegate.jobs.outbox import (
    DELIVERED,
    DROPPED,
    FAILED,
    GONE_MESSAGE,
    PENDING,
    AttemptResult,
    WebhookEvent,
)
from imagegate.protocol import views
from imagegate.webhooks.signing import SignatureError, sign
from imagegate.webhooks.targets import check_webhook_url

log = logging.getLogger("imagegate.webhooks")

USER_AGENT = "imagegate-webhooks"
MAX_RESPONSE_BYTES = 64 * 1024
ERROR_SNIPPET_CHARS = 200
DEFAULT_PORTS = {"http": 80, "https": 443}
DB_ERROR_PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again. Delay before retry n (n = attempts so far) is
    ``min(base_delay * 2**(n-1), max_delay)``, scaled by a random factor in ``1 ± jitter``."""

    base_delay: float = 5.0
    max_delay: float = 3600.0
    jitter: float = 0.2
    # Intermediate events (queued, start, progress): this many attempts at most.
    intermediate_attempts: int = 3

    def delay(self, attempts: int, rng: random.Random) -> float:
        raw = min(self.base_delay * (2 ** max(0, attempts - 1)), self.max_delay)
        return raw * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


class DeliveryRefused(Exception):
    """The target cannot be sent to (scheme or address policy); recorded as the attempt's error."""


class _DeadlineStream(httpcore.NetworkStream):
    """Every socket operation gets what is left of the attempt's deadline, so a receiver that
    drips its answer cannot stretch one attempt past ``webhook_timeout_seconds``."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the webhook timeout has passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials the addresses that were checked, whatever host name the URL carries: each in turn
    until one connects, each with an equal share of the time left."""

    def __init__(self, addresses: Sequence[str], deadline: float) -> None:
        self._addresses = list(addresses)
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
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for index, address in enumerate(self._addresses):
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the webhook timeout has passed")
            share = left / (len(self._addresses) - index)
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=share if timeout is None else min(timeout, share),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over unix sockets")


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass
class _Response:
    status_code: int
    retry_after: str | None
    body: bytes


class Deliverer:
    """Claims due events and sends them from a small thread pool.

    ``policy``, ``lease_seconds``, ``poll_interval`` and ``rng`` are injectable so tests can run
    the real schedule fast.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 8,
        lease_seconds: float | None = None,
        poll_interval: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.outbox = store.outbox
        self.policy = policy or RetryPolicy()
        self.concurrency = max(1, concurrency)
        # Long enough for name resolution plus a full attempt; a deliverer that dies holds its
        # events no longer than this.
        self.lease_seconds = lease_seconds if lease_seconds is not None else settings.webhook_timeout_seconds + 30.0
        self.poll_interval = poll_interval
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="imagegate-webhook")
        self._ssl_context = httpx.create_ssl_context(trust_env=True)

    # -- loops --------------------------------------------------------------------------------

    def deliver_due_once(self) -> int:
        """Claim what is due now, send it concurrently, wait for the outcomes; returns how many."""
        events = self.outbox.claim_due(self.concurrency, self.lease_seconds)
        wait([self._pool.submit(self.deliver, event) for event in events])
        return len(events)

    def run_forever(self, stop_event: threading.Event) -> None:
        in_flight: set[Future[None]] = set()
        wake = threading.Event()
        try:
            while not stop_event.is_set():
                in_flight = {f for f in in_flight if not f.done()}
                free = self.concurrency - len(in_flight)
                claimed: list[WebhookEvent] = []
                if free > 0:
                    try:
                        if self.outbox.has_due():
                            claimed = self.outbox.claim_due(free, self.lease_seconds)
                    except Exception:
                        # The database may be briefly unavailable; events stay pending meanwhile,
                        # and a pause keeps the log from filling up with the same error.
                        log.exception("could not claim webhook events")
                        stop_event.wait(DB_ERROR_PAUSE_SECONDS)
                        continue
                for event in claimed:
                    future = self._pool.submit(self.deliver, event)
                    # A finished delivery may unblock the request's next event: look again at once.
                    future.add_done_callback(lambda _f: wake.set())
                    in_flight.add(future)
                if claimed and len(claimed) == free:
                    continue
                wake.wait(self.poll_interval)
                wake.clear()
        finally:
            # In-flight attempts are bounded by the webhook timeout; whatever is left unrecorded
            # stays leased and is retried after the lease expires.
            wait(in_flight, timeout=self.settings.webhook_timeout_seconds + 5.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one attempt --------------------------------------------------------------------------

    def deliver(self, event: WebhookEvent) -> None:
        attempted_at = time.time()
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        try:
            response = self._post(event)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                snippet = response.body[:ERROR_SNIPPET_CHARS].decode("utf-8", "replace").strip()
                error = f"HTTP {status_code}" + (f": {snippet}" if snippet else "")
                retry_after = parse_retry_after(response.retry_after, time.time())
        except DeliveryRefused as exc:
            error, permanent = str(exc), True
        except InputError as exc:
            # Refused address or unresolvable name: nothing was sent. DNS can change, so retry.
            message = str(exc)
            if message.startswith(f"{exc.field}: "):
                message = message[len(exc.field) + 2 :]
            error = f"target refused: {message}"
        except httpcore.TimeoutException as exc:
            error = f"timed out after {self.settings.webhook_timeout_seconds:g} s ({type(exc).__name__})"
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug here must not lose the event: record it and retry
            log.exception("webhook %s: unexpected error", event.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
        duration_ms = (time.monotonic() - started) * 1000.0
        try:
            result = self._outcome(event, attempted_at, duration_ms, status_code, error, retry_after, permanent)
            owned = self.outbox.finish_attempt(event, result)
        except Exception:
            # Unrecorded, the event stays leased and is sent again after the lease: at least once.
            log.exception("webhook %s: could not record the attempt", event.id)
            return
        if not owned:
            log.info("webhook %s: lease was lost during the attempt; the newer claim decides", event.id)
        elif result.state != DELIVERED:
            log.info("webhook %s (%s) attempt %d: %s -> %s", event.id, event.event_type, event.attempts, error, result.state)

    def _outcome(
        self,
        event: WebhookEvent,
        attempted_at: float,
        duration_ms: float,
        status_code: int | None,
        error: str | None,
        retry_after: float | None,
        permanent: bool,
    ) -> AttemptResult:
        now = time.time()

        def result(state: str, next_at: float = now, note: str | None = None, stop: bool = False) -> AttemptResult:
            text = error if note is None else (f"{error}; {note}" if error else note)
            return AttemptResult(attempted_at, duration_ms, status_code, text, state, next_at, stop)

        if status_code is not None and 200 <= status_code < 300:
            return result(DELIVERED)
        if status_code == 410:
            return result(DROPPED, note=GONE_MESSAGE, stop=True)
        if permanent:
            return result(FAILED)
        if not event.terminal:
            if event.attempts >= self.policy.intermediate_attempts:
                return result(FAILED, note=f"gave up after {event.attempts} attempts (progress events are best-effort)")
            if self.outbox.has_newer_event(event):
                # A newer event carries fresher state; retrying this one would only delay it.
                return result(DROPPED, note="superseded by a newer event; not retried")
        if retry_after is not None:
            delay = max(retry_after, self.policy.base_delay)
        else:
            with self._rng_lock:
                delay = self.policy.delay(event.attempts, self._rng)
        next_at = now + delay
        if next_at > event.deliver_until:
            if retry_after is None and now < event.deliver_until:
                # One last attempt at the very end of the window rather than none.
                next_at = event.deliver_until
            else:
                return result(FAILED, note="gave up: the retry window has ended")
        return result(PENDING, next_at)

    def _pin(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to; loopback only in development mode."""
        from imagegate.media.inputs import resolve_public_addresses

        try:
            return resolve_public_addresses(host, port, allow_private=False)
        except InputError:
            if not self.settings.allow_http_webhooks:
                raise
            addresses = resolve_public_addresses(host, port, allow_private=True)
            if not all(_is_loopback(address) for address in addresses):
                raise
            return addresses

    def body(self, event: WebhookEvent) -> bytes:
        """The event's body: rendered from the job's snapshot with this server's base URL (the
        same bytes on every retry), or stored whole by an older release."""
        if event.job_snapshot is None:
            return (event.payload or "").encode("utf-8")
        payload = views.webhook_payload(Job.from_snapshot(event.job_snapshot), self.settings.base_url)
        return json.dumps(payload.content(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _post(self, event: WebhookEvent) -> _Response:
        try:
            check_webhook_url(event.target_url, "webhook", self.settings)
        except ValidationError as exc:
            raise DeliveryRefused(f"target refused: {exc.message}") from exc
        try:
            url = httpx.URL(event.target_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise DeliveryRefused("target refused: not a valid URL") from exc
        scheme = url.scheme
        wire_host = url.raw_host  # IDNA-encoded, IPv6 without brackets
        host = wire_host.decode("ascii")
        port = url.port or DEFAULT_PORTS[scheme]
        addresses = self._pin(host, port)
        if scheme == "http" and not all(_is_loopback(address) for address in addresses):
            raise DeliveryRefused("target refused: plain http:// is only sent to loopback addresses")
        try:
            # Read at every attempt, so a rotated secret applies to retries too.
            secret = self.store.keys.get(event.key_id).webhook_secret
            timestamp = int(time.time())
            body = self.body(event)
            signature = sign(secret, event.id, timestamp, body)
        except SignatureError as exc:
            raise DeliveryRefused(f"cannot sign: {exc}") from exc
        host_header = b"[" + wire_host + b"]" if ":" in host else wire_host
        if port != DEFAULT_PORTS[scheme]:
            host_header += b":%d" % port
        headers = [
            (b"Host", host_header),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT.encode()),
            (b"webhook-id", event.id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", signature.encode()),
        ]
        if url.username:
            credentials = f"{url.username}:{url.password or ''}".encode()
            headers.append((b"Authorization", b"Basic " + base64.b64encode(credentials)))
        timeout = self.settings.webhook_timeout_seconds
        deadline = time.monotonic() + timeout
        core_url = httpcore.URL(scheme=scheme.encode(), host=wire_host, port=port, target=url.raw_path or b"/")
        extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        with httpcore.ConnectionPool(
            ssl_context=self._ssl_context, network_backend=_PinnedBackend(addresses, deadline), retries=0, max_connections=1
        ) as pool:
            with pool.stream("POST", core_url, headers=headers, content=body, extensions=extensions) as response:
                received = bytearray()
                # The body is only kept for the error text: read a little, then hang up.
                for chunk in response.iter_stream():
                    received += chunk
                    if len(received) >= MAX_RESPONSE_BYTES:
                        break
                retry_after = None
                for name, value in response.headers:
                    if name.lower() == b"retry-after":
                        retry_after = value.decode("latin-1")
                return _Response(response.status, retry_after, bytes(received))


def start_deliverer_thread(store: JobStore, settings: Settings, **options: Any) -> tuple[threading.Thread, threading.Event]:
    """Run a :class:`Deliverer` in a daemon thread; set the returned event to stop it."""
    stop_event = threading.Event()
    deliverer = Deliverer(store, settings, **options)

    def run() -> None:
        try:
            deliverer.run_forever(stop_event)
        except Exception:
            log.exception("the webhook deliverer stopped")
        finally:
            deliverer.close()

    thread = threading.Thread(target=run, name="imagegate-webhook-deliverer", daemon=True)
    thread.start()
    return thread, stop_event
