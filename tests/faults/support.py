"""Helpers for the fault tests: the real server, its processes, the books, a webhook receiver.

Everything here observes the system from outside (HTTP, the database, /proc) or breaks it the
way the world does (signals, a database that goes away, a disk that refuses writes); nothing is
mocked.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from harness import RunningServer, free_port, start_server, wait_status  # noqa: F401

from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job, JobStore, LedgerEntry

SUB = "Ocp-Apim-Subscription-Key"
FLUX_DEV = "/flux-dev/v1/dev/textToImage"
FLUX_DEV_PRICE = 25_000  # micro-dollars per image

# About a second on a quiet 2-core machine once the model is warm.
FAST: dict[str, Any] = {
    "prompt": "a small quiet harbour",
    "num_inference_steps": 1,
    "image_size": {"width": 64, "height": 64},
    "enable_safety_checker": False,
    "output_format": "png",
}


def slow(steps: int = 12, prompt: str = "a long exposure of a harbour", side: int = 256) -> dict[str, Any]:
    """A job that runs for a while on the tiny model: on a quiet 2-core machine a step takes about
    15 ms at 256-384² and grows with the square of the token count (768² about 0.1 s); load
    multiplies it. Tests that need a job to outlast something pick steps and side for that."""
    return {
        "prompt": prompt,
        "num_inference_steps": steps,
        "image_size": {"width": side, "height": side},
        "enable_safety_checker": False,
        "output_format": "png",
    }


# -- the server ------------------------------------------------------------------------------------


def database_url(server: Any) -> str:
    url = server.env.get("IMAGEGATE_DATABASE_URL")
    return url or f"sqlite:///{Path(server.env['IMAGEGATE_DATA_DIR']) / 'imagegate.db'}"


def open_store(server_or_url: Any) -> JobStore:
    url = server_or_url if isinstance(server_or_url, str) else database_url(server_or_url)
    return JobStore(url, pool_size=2)


def new_key(store: JobStore, usd: float = 100.0, name: str = "faults") -> tuple[str, str]:
    """(plaintext, key id): the same JobStore call `imagegate keys create` makes."""
    plaintext, key = store.keys.create(name=name, balance_micros=int(usd * 1_000_000))
    return plaintext, key.id


def submit(client: httpx.Client, key: str, body: dict[str, Any], path: str = FLUX_DEV, **headers: str) -> str:
    r = client.post(path, json=body, headers={SUB: key, **headers})
    assert r.status_code == 202, r.text
    return r.json()["request_id"]


def status(client: httpx.Client, key: str, request_id: str) -> dict[str, Any]:
    r = client.get(f"/v2/requests/status/{request_id}", headers={SUB: key})
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_running(client: httpx.Client, key: str, request_id: str, timeout: float = 180) -> None:
    """Until the job is inside the denoising loop (at least one step reported)."""

    def running() -> bool:
        body = status(client, key, request_id)
        assert body["status"] in ("QUEUED", "PROCESSING"), body
        return body["status"] == "PROCESSING" and body["progress"] > 0

    wait_until(running, timeout, f"{request_id} to be running", interval=0.02)


def wait_terminal(store: JobStore, job_ids: Iterable[str], timeout: float = 180) -> dict[str, Job]:
    ids = list(job_ids)

    def done() -> dict[str, Job] | None:
        jobs = {i: store.jobs.get(i) for i in ids}
        return jobs if all(j.status.terminal for j in jobs.values()) else None

    return wait_until(done, timeout, f"{len(ids)} job(s) to end", interval=0.1)


def stop_gracefully(server: Any, timeout: float = 120) -> float:
    """SIGTERM and wait; returns how long the server took to exit."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout)
    return time.monotonic() - started


def kill_hard(server: Any) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)


# -- processes ---------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def worker_pids(server: Any) -> list[int]:
    """The embedded worker processes of a running server."""
    return sorted(server.worker_pids())


def wait_workers(server: Any, count: int = 1, timeout: float = 60, exclude: Iterable[int] = ()) -> list[int]:
    skip = set(exclude)

    def found() -> list[int] | None:
        pids = [p for p in worker_pids(server) if p not in skip]
        return pids if len(pids) >= count else None

    return wait_until(found, timeout, f"{count} worker process(es)", interval=0.05)


# -- the books ------------------------------------------------------------------------------------------


def check_books(store: JobStore, *, all_terminal: bool = True) -> dict[str, list[str]]:
    """The wallet invariant and each job's ledger story; returns {job id: ledger kinds}.

    - every key's balance equals the sum of its ledger rows;
    - every ledger row that names a job names an existing job of the same key;
    - a priced job has exactly one hold, first, of its price; then nothing while it is open,
      release of the whole hold when it ended ERROR or CANCELED, a capture (after a partial
      release, when the final price was lower) when it ended COMPLETED or FAILED;
    - a free job has no ledger rows.
    """
    for key_id, balance, ledger_sum in store.keys.balances():
        assert balance == ledger_sum, f"{key_id}: balance {balance} != ledger sum {ledger_sum}"
    jobs = {j.id: j for j in store.jobs.list()}
    rows_by_job: dict[str, list[LedgerEntry]] = defaultdict(list)
    for key in store.keys.list():
        for row in store.keys.ledger(key.id):
            if row.job_id is not None:
                rows_by_job[row.job_id].append(row)
    for job_id, rows in rows_by_job.items():
        assert job_id in jobs, f"ledger rows {[r.kind.value for r in rows]} for a job that does not exist: {job_id}"
        assert all(r.key_id == jobs[job_id].key_id for r in rows), job_id
    stories: dict[str, list[str]] = {}
    for job in jobs.values():
        rows = sorted(rows_by_job.get(job.id, []), key=lambda r: r.id)
        kinds = [r.kind.value for r in rows]
        stories[job.id] = kinds
        if all_terminal:
            assert job.status.terminal, f"{job.id} is still {job.status.value}"
        if not rows:
            assert job.price_micros == 0, f"{job.id} ({job.status.value}) costs {job.price_micros} but has no hold"
            continue
        assert kinds[0] == "hold" and kinds.count("hold") == 1, (job.id, kinds)
        held = -rows[0].amount_micros
        assert held > 0, (job.id, rows[0])
        if not job.status.terminal:
            assert kinds == ["hold"], (job.id, job.status.value, kinds)
            assert held == job.price_micros, job.id
        elif job.status in (JobStatus.ERROR, JobStatus.CANCELED):
            assert kinds == ["hold", "release"], (job.id, job.status.value, kinds)
            assert rows[1].amount_micros == held, (job.id, rows)
        elif kinds == ["hold", "capture"]:
            assert job.price_micros == held, (job.id, job.price_micros, held)
        else:
            assert kinds == ["hold", "release", "capture"], (job.id, job.status.value, kinds)
            assert held - rows[1].amount_micros == job.price_micros, (job.id, rows, job.price_micros)
    return stories


def balance(store: JobStore, key_id: str) -> int:
    return store.keys.get(key_id).balance_micros


# -- a webhook receiver that can be down ------------------------------------------------------------------


@dataclass
class Delivery:
    at: float
    webhook_id: str
    body: dict[str, Any]
    raw: bytes = b""  # the body exactly as received, and the headers: what a signature covers
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def job_id(self) -> str | None:
        b = self.body
        return b.get("request_id") or b.get("requestId") or b.get("id") or b.get("jobId")

    @property
    def status(self) -> str | None:
        return self.body.get("status")


class Receiver:
    """Answers 200 to every POST on a fixed port; ``stop()`` makes the port refuse connections."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.deliveries.append(Delivery(time.time(), headers.get("webhook-id", ""), json.loads(data), data, headers))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def for_job(self, job_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.job_id == job_id]

    def terminal_ids(self, job_id: str) -> set[str]:
        """Distinct webhook ids of the job's final-status deliveries (retries reuse the id)."""
        final = {"COMPLETED", "FAILED", "ERROR", "CANCELED", "completed", "failed", "error", "canceled"}
        return {d.webhook_id for d in self.for_job(job_id) if d.status in final}

    def wait_terminal(self, job_ids: Iterable[str], timeout: float = 60) -> None:
        ids = list(job_ids)
        wait_until(lambda: all(self.terminal_ids(j) for j in ids), timeout, f"final webhooks of {ids}", interval=0.1)


def pending_terminal_events(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """The job's final-status webhook events still waiting to be delivered (read straight from
    the outbox table: what a restart must not lose)."""
    import sqlalchemy as sa

    from imagegate.jobs import schema

    e = schema.webhook_events
    with store.read() as conn:
        rows = conn.execute(sa.select(e).where(e.c.job_id == job_id, e.c.terminal.is_(True))).all()
    return [dict(r._mapping) for r in rows if r.state == "pending"]


def log_has(server: Any, text: str) -> bool:
    return text in server.log()


def server_env(**values: Any) -> dict[str, str]:
    """IMAGEGATE_* overrides for start_server. The fault tests always run their models on the CPU:
    their timing assumptions (a step of a 256² image takes a tenth of a second or more) and the
    memory limit (host memory) are about the CPU, whatever accelerator the machine has."""
    values.setdefault("device", "cpu")
    return {f"IMAGEGATE_{k.upper()}": str(v) for k, v in values.items()}


def read_limits(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        out[line[:26].strip()] = line[26:].split()[0]
    return out

