"""Webhook test kit: real stores (SQLite file and PostgreSQL), a scriptable loopback receiver,
and deliverers running the real loop with a fast retry schedule."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from imagegate.config import Settings
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import ApiKey, Job, JobStore, NewJob
from imagegate.webhooks.deliverer import Deliverer, RetryPolicy
from imagegate.jobs.outbox import OutboxRepository

FAST = RetryPolicy(base_delay=0.05, max_delay=0.4, jitter=0.2, intermediate_attempts=3)
OUTPUT = {
    "media": [{"key": "p-image/out.png", "content_type": "image/png"}],
    "media_type": "image/png",
    "seed": 7,
    "has_nsfw_concepts": [False],
}


# -- the loopback receiver -----------------------------------------------------------------------


@dataclass
class Reply:
    """How the receiver answers one request: a status after an optional stall, or after a gate opens."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None
    body: bytes = b""


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.default = Reply()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                got = Received(time.time(), self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._cond:
                    receiver.requests.append(got)
                    reply = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver._cond.notify_all()
                if reply.gate is not None:
                    reply.gate.wait(20)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the deliverer gave up (timeout) or was killed

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = self.of(path)
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} webhook requests, got {len(got)}: {[r.json for r in got]}")
                self._cond.wait(left)

    def of(self, path: str | None = None) -> list[Received]:
        return [r for r in self.requests if path is None or r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        public_base_url="https://images.example.test",
        allow_http_webhooks=True,
        webhook_timeout_seconds=1.0,
        webhook_retry_hours=0.01,  # 36 s: long enough for any test, short enough to see the end
    )
    values.update(overrides)
    return Settings(**values)


# -- driving jobs through the store ----------------------------------------------------------------


@dataclass
class Kit:
    store: JobStore
    settings: Settings
    outbox: OutboxRepository
    key: ApiKey
    plaintext: str
    _stops: list[Callable[[], None]] = field(default_factory=list)

    def submit(
        self,
        url: str | None,
        mode: str | None = "terminal",
        events: list[str] | None = None,
        *,
        protocol: str = "queue",
        model_id: str = "p-image",
    ) -> Job:
        job, _ = self.store.jobs.submit(
            NewJob(
                key_id=self.key.id,
                model_id=model_id,
                protocol=protocol,
                params={"prompt": "a lighthouse"},
                price_micros=0,
                max_attempts=3,
                webhook_url=url,
                webhook_mode=mode if url else None,
                webhook_events=events,
            )
        )
        return job

    def claim(self, job: Job) -> Job:
        claimed = self.store.jobs.claim("worker-1", [job.model_id])
        assert claimed is not None and claimed.id == job.id
        return claimed

    def finish(self, job: Job, status: JobStatus = JobStatus.COMPLETED, error: str | None = None) -> Job:
        done = self.store.jobs.finish(
            job.id, "worker-1", status, output=OUTPUT if status is JobStatus.COMPLETED else None, error=error
        )
        assert done is not None
        return done

    def run(self, job: Job, status: JobStatus = JobStatus.COMPLETED, error: str | None = None) -> Job:
        return self.finish(self.claim(job), status, error)

    def deliverer(self, *, start: bool = True, **options: Any) -> Deliverer:
        options.setdefault("policy", FAST)
        options.setdefault("poll_interval", 0.02)
        options.setdefault("lease_seconds", 5.0)
        d = Deliverer(self.store, options.pop("settings", self.settings), **options)
        if start:
            stop = threading.Event()
            thread = threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
            thread.start()

            def halt() -> None:
                stop.set()
                thread.join(10)
                d.close()

            self._stops.append(halt)
        else:
            self._stops.append(d.close)
        return d

    def event(self, job_id: str, event_type: str) -> Any:
        found = [e for e in self.outbox.events_for_job(job_id) if e.event_type == event_type]
        assert found, f"no {event_type} event for {job_id}"
        return found[-1]

    def wait_state(self, job_id: str, event_type: str, state: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.outbox.events_for_job(job_id) if e.event_type == event_type]
            if events and events[-1].state == state:
                return events[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{event_type} event of {job_id} never reached {state}: {events}")
            time.sleep(0.02)


def make_kit(store: JobStore, tmp_path: Path, **settings: Any) -> Kit:
    s = make_settings(tmp_path, **settings)
    # The store records events with its own retry window; the kit's is short.
    store.outbox.retry_seconds = s.webhook_retry_hours * 3600.0
    outbox = store.outbox
    plaintext, key = store.keys.create(name="webhooks")
    return Kit(store, s, outbox, key, plaintext)


@pytest.fixture()
def kit_factory(tmp_path: Path) -> Iterator[Callable[..., Kit]]:
    kits: list[Kit] = []

    def factory(store: JobStore, **settings: Any) -> Kit:
        kit = make_kit(store, tmp_path, **settings)
        kits.append(kit)
        return kit

    yield factory
    for kit in kits:
        for stop in kit._stops:
            stop()
