"""Sends the outbox's events: concurrent, signed, retried, and never to a private address.

Each attempt goes through :mod:`imagegate.network`, the transport input fetching uses too: the
target's host is resolved and every answer judged by the webhook address policy (public only;
loopback as well when ``allow_http_webhooks`` is on, for development), and the connection goes
to exactly the address that was checked, with the URL's host name kept for the Host header, SNI
and certificate checks, so DNS rebinding cannot turn a webhook into a request to an internal
service. A target the policy refuses fails its event at once: the answer would be the same on
every retry.

Retry schedule (see :class:`RetryPolicy`): terminal events are retried with exponential backoff
and jitter until their ``deliver_until`` (``webhook_retry_hours`` after the event, 25 h by
default); intermediate events get a few attempts within a short window. ``Retry-After`` is
honoured, and 410 Gone stops every further delivery for that request.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.config import Settings
from imagegate.exceptions import AddressRefusedError, OutboundRefusedError, ValidationError
from imagegate.jobs.queue import Job
from imagegate.jobs.wakeups import Topic
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
from imagegate.media.storage import storage_for
from imagegate.network import AddressPolicy, guarded_client
from imagegate.protocol import views
from imagegate.telemetry.metrics import record_webhook_delivery
from imagegate.webhooks.signing import SignatureError, sign
from imagegate.webhooks.targets import check_webhook_url

log = logging.getLogger("imagegate.webhooks")

USER_AGENT = "imagegate-webhooks"
MAX_RESPONSE_BYTES = 64 * 1024
ERROR_SNIPPET_CHARS = 200
DB_ERROR_PAUSE_SECONDS = 2.0
MIN_WAIT_SECONDS = 0.005


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


@dataclass
class _Response:
    status_code: int
    retry_after: str | None
    body: bytes


class Deliverer:
    """Claims due events and sends them from a small thread pool.

    ``policy``, ``lease_seconds``, ``poll_interval`` (a fixed idle wait instead of waiting for
    wake-ups and due times) and ``rng`` are injectable so tests can run the real schedule fast.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 8,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.outbox = store.outbox
        # Bodies carry media URLs, which the storage makes (presigned ones with S3, fresh at
        # every attempt).
        self.storage = storage_for(settings)
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
        """Deliver until ``stop_event``. Idle, it sleeps until the next event is due, a new event
        is announced (the store's wake-ups) or the fallback poll, whichever comes first."""
        in_flight: set[Future[None]] = set()
        wake = threading.Event()

        def on_wakeup(topic: str, _value: str) -> None:
            if topic in (Topic.WEBHOOK, Topic.ANY):
                wake.set()

        unsubscribe = self.store.wakeups.subscribe(on_wakeup)
        try:
            while not stop_event.is_set():
                in_flight = {f for f in in_flight if not f.done()}
                free = self.concurrency - len(in_flight)
                claimed: list[WebhookEvent] = []
                due_at: float | None = None
                if free > 0:
                    try:
                        due_at = self.outbox.next_due_at()
                        if due_at is not None and due_at <= time.time():
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
                wake.wait(self._idle_wait(due_at, claimed))
                wake.clear()
        finally:
            unsubscribe()
            # In-flight attempts are bounded by the webhook timeout; whatever is left unrecorded
            # stays leased and is retried after the lease expires.
            wait(in_flight, timeout=self.settings.webhook_timeout_seconds + 5.0)

    def _idle_wait(self, due_at: float | None, claimed: list[WebhookEvent]) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        fallback = self.settings.poll_fallback_seconds
        if due_at is None or not claimed and due_at <= time.time():
            # Nothing pending, or what is due waits behind a delivery in flight (whose end wakes us).
            return fallback
        return min(fallback, max(MIN_WAIT_SECONDS, due_at - time.time()))

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
        except AddressRefusedError as exc:
            # The policy will say the same on every retry: nothing was sent, nothing will be.
            error, permanent = f"target refused: {exc.message}", True
        except OutboundRefusedError as exc:
            # An unresolvable name: nothing was sent, and DNS can change, so retry.
            error = f"target unreachable: {exc.message}"
        except httpx.TimeoutException as exc:
            error = f"timed out after {self.settings.webhook_timeout_seconds:g} s ({type(exc).__name__})"
        except (httpx.TransportError, httpx.StreamError, OSError) as exc:
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
        record_webhook_delivery(result.state)
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

    def body(self, event: WebhookEvent) -> bytes:
        """The event's body: rendered from the job's snapshot with this server's base URL (the
        same bytes on every retry), or stored whole by an older release."""
        if event.job_snapshot is None:
            return (event.payload or "").encode("utf-8")
        payload = views.webhook_payload(Job.from_snapshot(event.job_snapshot), self.settings.base_url, self.storage)
        return json.dumps(payload.content(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _post(self, event: WebhookEvent) -> _Response:
        try:
            check_webhook_url(event.target_url, "webhook", self.settings)
            url = httpx.URL(event.target_url)
        except ValidationError as exc:
            raise DeliveryRefused(f"target refused: {exc.message}") from exc
        except (httpx.InvalidURL, ValueError) as exc:
            raise DeliveryRefused("target refused: not a valid URL") from exc
        try:
            # Read at every attempt, so a rotated secret applies to retries too.
            secret = self.store.keys.get(event.key_id).webhook_secret
            timestamp = int(time.time())
            body = self.body(event)
            signature = sign(secret, event.id, timestamp, body)
        except SignatureError as exc:
            raise DeliveryRefused(f"cannot sign: {exc}") from exc
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        timeout = self.settings.webhook_timeout_seconds
        policy = AddressPolicy.for_webhooks(self.settings, url.scheme)
        # Credentials in the URL's user part go out as Basic auth (httpx does that from the URL).
        with guarded_client(
            policy, timeout=timeout, deadline=time.monotonic() + timeout, ssl_context=self._ssl_context
        ) as client:
            with client.stream("POST", url, headers=headers, content=body) as response:
                received = bytearray()
                # The body is only kept for the error text: read a little, then hang up.
                for chunk in response.iter_raw():
                    received += chunk
                    if len(received) >= MAX_RESPONSE_BYTES:
                        break
                return _Response(response.status_code, response.headers.get("retry-after"), bytes(received))


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
