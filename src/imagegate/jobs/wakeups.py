"""Wake-ups: a process that changed something tells the processes waiting for it, at once.

The database stays the truth; a wake-up only says "look again". Every waiter also looks on a slow
fallback timer, so a lost wake-up costs latency, never correctness.

- **PostgreSQL**: ``NOTIFY`` on one channel, sent inside the transaction of the change (PostgreSQL
  delivers it at commit, never for a rolled-back change); each listening process holds one
  ``LISTEN`` connection and a thread that dispatches what arrives.
- **SQLite** (one host): every listening process binds an abstract Unix datagram socket and leaves a
  marker file named after it in a directory beside the database file; a change is announced, after
  its commit, with one datagram to each marker's socket. Processes of one ``serve`` (API processes
  and workers) and hand-started workers on the same host share it.

Messages are ``(topic, value)`` pairs: see the ``Topic`` constants. A listener that lost its
connection delivers ``(Topic.ANY, "")`` once it is back: anything may have changed meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imagegate.jobs.database import POSTGRES_CONNECT_ARGS, Database

log = logging.getLogger("imagegate.wakeups")

CHANNEL = "imagegate"
# The largest datagram or NOTIFY payload we send; values are ids, far below it.
MAX_MESSAGE_BYTES = 512
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)

Callback = Callable[[str, str], None]


class Topic:
    QUEUED = "q"  # a job of model <value> is waiting to be claimed
    CANCEL = "x"  # job <value> was asked to stop
    CHANGED = "c"  # job <value> changed (status, progress)
    WEBHOOK = "w"  # a webhook event was recorded
    KEY = "k"  # API key <value> changed (disabled, topped up, secret rotated)
    MODELS = "m"  # a model switch changed
    ANY = "*"  # the listener may have missed messages: look at everything again


def encode(topic: str, value: str) -> str:
    return f"{topic}:{value}"


def decode(message: str) -> tuple[str, str]:
    topic, _, value = message.partition(":")
    return topic, value


class Wakeups:
    """Publishes wake-ups of one database and, once someone subscribes, listens for them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._callbacks: list[Callback] = []
        self._lock = threading.Lock()
        self._listener: _Listener | None = None
        self._local_dir = None if db.postgres else _local_directory(db)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, conn: Connection, topic: str, value: str = "") -> None:
        """Announce ``topic:value`` once ``conn``'s transaction commits (never if it rolls back)."""
        message = encode(topic, value)[:MAX_MESSAGE_BYTES]
        if self.db.postgres:
            conn.execute(sa.text("SELECT pg_notify(:channel, :message)"), {"channel": CHANNEL, "message": message})
        else:
            self.db.after_commit(conn, lambda: self._send_local(message))

    def _send_local(self, message: str) -> None:
        assert self._local_dir is not None
        data = message.encode("utf-8", "surrogatepass")
        try:
            names = os.listdir(self._local_dir)
        except FileNotFoundError:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            for name in names:
                try:
                    sock.sendto(data, _abstract_address(name))
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its process is gone (killed): nobody will remove the marker but us.
                    _remove_quietly(self._local_dir / name)
                except (BlockingIOError, OSError):
                    pass  # a full queue: that listener is busy and will look on its own anyway
        finally:
            sock.close()

    # -- listening ------------------------------------------------------------------------------

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(topic, value)`` (on the listener thread) for every wake-up; returns
        the function that unsubscribes it. Callbacks must be quick and must not raise."""
        with self._lock:
            self._callbacks.append(callback)
            if self._listener is None:
                self._listener = _PostgresListener(self) if self.db.postgres else _LocalListener(self)
                self._listener.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def _dispatch(self, topic: str, value: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(topic, value)
            except Exception:  # one bad subscriber must not starve the others
                log.exception("wake-up callback failed")

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            self._callbacks.clear()
        if listener is not None:
            listener.stop()


class _Listener:
    def __init__(self, owner: Wakeups) -> None:
        self.owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagegate-wakeups", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        raise NotImplementedError


class _PostgresListener(_Listener):
    def _run(self) -> None:
        import psycopg

        url = sa.engine.make_url(self.owner.db.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, **POSTGRES_CONNECT_ARGS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        log.info("listening for wake-ups again")
                        self.owner._dispatch(Topic.ANY, "")
                    failures = 0
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            self.owner._dispatch(*decode(notify.payload))
            except Exception as exc:  # the server restarting, a network cut: reconnect and resync
                if self._stop.is_set():
                    return
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                if failures == 0:
                    log.warning("wake-up connection lost (%s); reconnecting", type(exc).__name__)
                failures += 1
                self._stop.wait(delay)
                # Whatever happened while disconnected was not heard.
                self.owner._dispatch(Topic.ANY, "")


class _LocalListener(_Listener):
    def _run(self) -> None:
        directory = self.owner._local_dir
        assert directory is not None
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(_abstract_address(name))
        sock.settimeout(1.0)
        directory.mkdir(parents=True, exist_ok=True)
        marker = directory / name
        marker.touch()
        try:
            while not self._stop.is_set():
                try:
                    data = sock.recv(MAX_MESSAGE_BYTES + 16)
                except socket.timeout:
                    if not marker.exists():  # swept by a publisher that thought us dead
                        marker.touch()
                    continue
                self.owner._dispatch(*decode(data.decode("utf-8", "replace")))
        finally:
            sock.close()
            _remove_quietly(marker)


def _local_directory(db: Database) -> Path:
    path = sa.engine.make_url(db.url).database
    if not path or path == ":memory:":
        # An in-memory database has one process: wake-ups still flow through this host.
        return Path(f"/tmp/imagegate-wake-{os.getpid()}")
    return Path(path + ".wake")


def _abstract_address(name: str) -> bytes:
    # Linux abstract namespace: no path length limit from the data directory, nothing to clean up.
    return b"\0imagegate-wake-" + name.encode()


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
