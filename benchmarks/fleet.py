"""Fleet load test: one machine standing in for a fleet, driven hard, broken half-way, then audited.

    .venv/bin/python benchmarks/fleet.py [--seconds 60] [--clients 200] [--api-processes 2] [--workers 4]

Starts PostgreSQL-backed imagegate (a private PostgreSQL cluster, so it can be restarted) with
``--api-processes`` API processes and ``--workers`` worker processes on the tiny fixture weights,
media in a real S3 server (SeaweedFS, presigned URLs), and a webhook receiver on loopback. Then
``--clients`` concurrent clients (asyncio, in two load processes) submit for ``--seconds`` through
every protocol: the queue protocol (following each request by status polls or by its event
stream, with a webhook), sync-output, sync-url, the batch pair (with a webhook), the dojo jobs
protocol and the OpenAI-compatible images API. Every submission carries an Idempotency-Key and is
retried with it on 5xx and connection errors, as a careful client does. Half-way through one
worker process is SIGKILLed and PostgreSQL is restarted (stopped in immediate mode, down for
``--outage`` seconds).

Prints jobs/s, submit and end-to-end latency p50/p99 per protocol, errors by kind, and the audit:
every accepted request reached exactly one final status (the client's, the database's and the
webhooks' agree), every completed job's media downloads, every final webhook arrived with a valid
signature, and every key's balance equals its top-ups minus its captures, none negative. Exits 1
when an audit check fails.
"""

from __future__ import annotations

import os
import sys

# benchmarks/queue.py is named like the standard library's `queue`; running a script from this
# folder puts the folder first on sys.path, so take that entry out before anything imports `queue`.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from faults.postgres import PrivatePostgres, postgres_bindir  # noqa: E402
from faults.support import Delivery, Receiver, check_books, open_store  # noqa: E402
from harness import start_server  # noqa: E402
from media.support import seaweed_s3  # noqa: E402

from imagegate.jobs.status import JobStatus, LedgerKind  # noqa: E402
from imagegate.webhooks.signing import SignatureError, verify  # noqa: E402

SUB = "Ocp-Apim-Subscription-Key"
SECRET = "X-Secret-Key"
BEARER = "Authorization"
KEYS = 20
KEY_USD = 1000
# A submission is retried with its Idempotency-Key this long (5xx, connection errors), then given up.
SUBMIT_PATIENCE_SECONDS = 90.0
POLL_SECONDS = 1.0  # how often a polling client asks (fal's and Replicate's clients: every 0.5–1 s)
DRAIN_SECONDS = 240.0
FINAL = {"completed", "failed", "error", "canceled"}

# Each protocol's request, on the tiny weights and as cheap as the endpoint allows.
FLUX_DEV = "/flux-dev/v1/dev/textToImage"
FLUX_DEV_BODY = {"prompt": "a harbour at dusk", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2, "enable_safety_checker": False}
KLEIN = "/flux-2-klein-4b/v1/generateImage"
KLEIN_BODY = {"prompt": "a paper kite", "steps": 1, "width": 512, "height": 512}
PIXELFORGE = "/pixelforge-image/v1/qwen_image_gen/serve_image"
BATCH = "/flux-1-schnell/v1/getDataBatch"
CHECK = "/flux-1-schnell/v1/checkStatus"
BATCH_BODY = {"prompt": "a lighthouse", "num_steps": 1, "width": 64, "height": 64}
DOJO = "/api/v1/models/boogu-image-edit/run"
OPENAI = "/v1/images/generations"
OPENAI_BODY = {"model": "flux-dev", "prompt": "a red bicycle", "size": "64x64", "steps": 2}


# -- what a client saw ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """One submission as its client saw it."""

    protocol: str
    request_id: str | None = None  # None for the synchronous styles, whose answers carry no id
    accepted: bool = False
    final: str | None = None  # the final status the client observed, lowercase
    submit_s: float | None = None
    end_to_end_s: float | None = None
    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "where: kind", one per failed attempt
    ended_at: float = 0.0  # wall-clock time the client was done with it


@dataclass
class KeyInfo:
    key_id: str
    plaintext: str
    webhook_secret: str
    upload_url: str = ""


def _urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("http") else []
    if isinstance(value, dict):
        return [u for v in value.values() for u in _urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in _urls(v)]
    return []


def _kind(exc: BaseException | None = None, response: httpx.Response | None = None) -> str:
    if response is not None:
        return f"HTTP {response.status_code}"
    return type(exc).__name__


class Session:
    """One load-generator client: its key, its HTTP connection pool, its webhook target."""

    def __init__(self, http: httpx.AsyncClient, key: KeyInfo, hook: str, index: int) -> None:
        self.http = http
        self.key = key
        self.hook = hook
        self.index = index
        self.turn = 0

    async def submit(self, out: Outcome, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> httpx.Response | None:
        """Send until answered with one of ``ok``; retries keep the Idempotency-Key."""
        headers = {"Idempotency-Key": f"fleet-{uuid.uuid4().hex}", **kwargs.pop("headers", {})}
        started = time.monotonic()
        delay = 0.25
        while time.monotonic() - started < SUBMIT_PATIENCE_SECONDS:
            try:
                r = await self.http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                out.errors.append(f"submit: {_kind(exc)}")
            else:
                if r.status_code in ok:
                    out.accepted = True
                    out.submit_s = time.monotonic() - started
                    return r
                out.errors.append(f"submit: {_kind(response=r)}")
                if r.status_code < 500 and r.status_code != 429:
                    return None  # refused: retrying the same request cannot help
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)
        return None

    async def poll(self, out: Outcome, started: float, read: Callable[[], Awaitable[httpx.Response]], status_of: Callable[[Any], str]) -> Any:
        while True:
            try:
                r = await read()
            except httpx.HTTPError as exc:
                out.errors.append(f"poll: {_kind(exc)}")
                await asyncio.sleep(POLL_SECONDS)
                continue
            if r.status_code != 200:
                out.errors.append(f"poll: {_kind(response=r)}")
                await asyncio.sleep(POLL_SECONDS)
                continue
            body = r.json()
            status = status_of(body).lower()
            if status in FINAL:
                out.final = status
                out.end_to_end_s = time.monotonic() - started
                return body
            await asyncio.sleep(POLL_SECONDS)

    async def follow_events(self, out: Outcome, started: float) -> Any:
        """The request's event stream to its ``done`` event; a broken stream falls back to polls."""
        url = f"/v2/requests/{out.request_id}/events"
        try:
            async with self.http.stream("GET", url, headers={SUB: self.key.plaintext}, timeout=httpx.Timeout(30, read=60)) as r:
                if r.status_code != 200:
                    out.errors.append(f"events: {_kind(response=r)}")
                else:
                    name = None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            name = line[len("event: ") :]
                        elif line.startswith("data: ") and name == "done":
                            body = json.loads(line[len("data: ") :])
                            out.final = body["status"].lower()
                            out.end_to_end_s = time.monotonic() - started
                            return body
        except httpx.HTTPError as exc:
            out.errors.append(f"events: {_kind(exc)}")
        return await self.poll(out, started, lambda: self.http.get(f"/v2/requests/status/{out.request_id}", headers={SUB: self.key.plaintext}), lambda b: b["status"])

    # -- the protocols ----------------------------------------------------------------------------

    async def queue(self) -> Outcome:
        out = Outcome("queue (events)" if self.turn % 2 else "queue (polls)")
        started = time.monotonic()
        headers = {SUB: self.key.plaintext, "X-Webhook-URL": self.hook}
        r = await self.submit(out, "POST", FLUX_DEV, (202,), json={**FLUX_DEV_BODY, "seed": self.turn}, headers=headers)
        if r is None:
            return out
        out.request_id = r.json()["request_id"]
        if self.turn % 2:
            body = await self.follow_events(out, started)
        else:
            body = await self.poll(out, started, lambda: self.http.get(f"/v2/requests/status/{out.request_id}", headers={SUB: self.key.plaintext}), lambda b: b["status"])
        out.urls = _urls(body.get("output"))
        return out

    async def _answered(self, protocol: str, path: str, body: dict[str, Any], headers: dict[str, str], urls_of: Callable[[Any], list[str]]) -> Outcome:
        """A synchronous style: the answer is the result (or the request failed)."""
        out = Outcome(protocol)
        started = time.monotonic()
        r = await self.submit(out, "POST", path, (200,), json=body, headers=headers)
        if r is not None:
            out.request_id = r.headers.get("x-request-id")
            out.final, out.end_to_end_s, out.urls = "completed", time.monotonic() - started, urls_of(r.json())
        return out

    async def sync_output(self) -> Outcome:
        body = {**KLEIN_BODY, "seed": self.turn}
        return await self._answered("sync-output", KLEIN, body, {SUB: self.key.plaintext}, lambda b: [b["output"]])

    async def sync_url(self) -> Outcome:
        body = {"prompt": "the same street at noon", "image_urls": [self.key.upload_url]}
        return await self._answered("sync-url", PIXELFORGE, body, {SUB: self.key.plaintext}, lambda b: [b["url"]])

    async def batch(self) -> Outcome:
        out = Outcome("batch")
        started = time.monotonic()
        body = {**BATCH_BODY, "seed": self.turn, "webhook_url": self.hook}
        r = await self.submit(out, "POST", BATCH, (202,), json=body, headers={SECRET: self.key.plaintext})
        if r is None:
            return out
        out.request_id = r.json()["requestId"]
        done = await self.poll(out, started, lambda: self.http.post(CHECK, json={"requestId": out.request_id}, headers={SECRET: self.key.plaintext}), lambda b: b["status"])
        out.urls = _urls(done.get("output"))
        return out

    async def dojo(self) -> Outcome:
        out = Outcome("dojo")
        started = time.monotonic()
        body = {"prompt": "make it winter", "image": self.key.upload_url, "seed": self.turn}
        auth = {BEARER: f"Bearer {self.key.plaintext}"}
        r = await self.submit(out, "POST", DOJO, (200, 201, 202), json=body, headers=auth)
        if r is None:
            return out
        out.request_id = r.json()["jobId"]
        done = await self.poll(out, started, lambda: self.http.get(f"/api/v1/jobs/{out.request_id}", headers=auth), lambda b: b["status"])
        out.urls = _urls(done.get("output"))
        return out

    async def openai(self) -> Outcome:
        return await self._answered("openai", OPENAI, OPENAI_BODY, {BEARER: f"Bearer {self.key.plaintext}"}, lambda b: _urls(b["data"]))


# What most clients cycle through: the queue protocol (polls and event streams alike), the batch
# pair, sync-output and the OpenAI-compatible API, each a small render on the tiny weights.
MIX: list[Callable[[Session], Awaitable[Outcome]]] = [Session.queue, Session.batch, Session.sync_output, Session.queue, Session.openai]
# The endpoints without a size parameter render about a megapixel (sync-url: Qwen-Image from a
# reference; dojo: a Qwen-Image edit), hundreds of times the work of the others on a CPU: a few
# clients send only those, so that they are in the mix without starving everything else.
HEAVY: list[Callable[[Session], Awaitable[Outcome]]] = [Session.sync_url, Session.dojo]


async def _drive(base_url: str, keys: list[KeyInfo], hook: str, first: int, count: int, seconds: float, heavy: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=count * 2, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(240, connect=10), limits=limits) as http:

        async def client(index: int) -> None:
            session = Session(http, keys[index % len(keys)], hook, index)
            steps = [HEAVY[index % len(HEAVY)]] if index < heavy else MIX
            while time.monotonic() < deadline:
                step = steps[(index + session.turn) % len(steps)]
                session.turn += 1
                try:
                    outcome = await step(session)
                except Exception as exc:  # a client-side surprise is a finding, not a crash of the run
                    outcome = Outcome(step.__name__, errors=[f"client: {type(exc).__name__}: {exc}"])
                outcome.ended_at = time.time()
                outcomes.append(outcome)

        await asyncio.gather(*(client(first + i) for i in range(count)))
    return outcomes


def _load_process(args: tuple[str, list[KeyInfo], str, int, int, float, int], results: Any) -> None:
    results.put(asyncio.run(_drive(*args)))


# -- the webhook receiver ----------------------------------------------------------------------------


def _final(d: Delivery) -> bool:
    return str(d.body.get("status", "")).lower() in FINAL


def _by_request(receiver: Receiver) -> dict[str, list[Delivery]]:
    found: dict[str, list[Delivery]] = defaultdict(list)
    for d in list(receiver.deliveries):
        if d.job_id:
            found[d.job_id].append(d)
    return found


# -- the fleet ----------------------------------------------------------------------------------------


@dataclass
class Incident:
    at: float
    what: str


def _break_things(server: Any, pg: PrivatePostgres, started: float, kill_at: float, restart_at: float, outage: float, log: list[Incident]) -> None:
    time.sleep(max(0.0, started + kill_at - time.monotonic()))
    pids = server.worker_pids()
    if pids:
        os.kill(pids[0], signal.SIGKILL)
        log.append(Incident(time.monotonic() - started, f"SIGKILL worker pid {pids[0]}"))
    time.sleep(max(0.0, started + restart_at - time.monotonic()))
    pg.stop("immediate")
    log.append(Incident(time.monotonic() - started, "PostgreSQL stopped (immediate)"))
    time.sleep(outage)
    pg.start()
    log.append(Incident(time.monotonic() - started, "PostgreSQL started"))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.0f}"


@dataclass
class Check:
    name: str
    failures: list[str]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


def audit(store: Any, outcomes: list[Outcome], receiver: Receiver, keys: dict[str, KeyInfo], base_url: str) -> list[Check]:
    jobs = {j.id: j for j in store.jobs.list()}
    checks: list[Check] = []

    # Exactly one final status: nothing open, and the client's final status is the database's.
    open_jobs = [f"{j.id} still {j.status.value}" for j in jobs.values() if not j.status.terminal]
    disagree, lost = [], []
    for o in outcomes:
        if not (o.accepted and o.request_id):
            continue
        job = jobs.get(o.request_id)
        if job is None:
            lost.append(f"{o.protocol} {o.request_id}: accepted, not in the database")
        elif o.final is not None and o.final != job.status.value.lower() and not (o.final == "failed" and job.status is JobStatus.ERROR):
            disagree.append(f"{o.request_id}: client saw {o.final}, database says {job.status.value}")
    unanswered = [f"{o.protocol}: accepted but no final status seen" for o in outcomes if o.accepted and o.final is None]
    accepted = sum(o.accepted for o in outcomes)
    checks.append(Check("every accepted request has exactly one final status", lost + open_jobs + disagree + unanswered, f"{accepted} accepted, {len(jobs)} jobs in the database"))

    # Media: every completed job's files download (presigned S3 URLs), through the status view.
    completed = [j for j in jobs.values() if j.status is JobStatus.COMPLETED]
    by_key = {k.key_id: k for k in keys.values()}

    def download(job: Any) -> list[str]:
        key = by_key[job.key_id]
        problems = []
        with httpx.Client(base_url=base_url, timeout=60) as http:
            r = http.get(f"/v2/requests/status/{job.id}", headers={SUB: key.plaintext})
            urls = _urls(r.json().get("output")) if r.status_code == 200 else []
            if not urls:
                return [f"{job.id}: no media URL in its status ({r.status_code})"]
            for url in urls:
                got = http.get(url)
                if got.status_code != 200 or not got.content:
                    problems.append(f"{job.id}: {url[:80]}… answered {got.status_code}")
        return problems

    with ThreadPoolExecutor(8) as pool:
        media_problems = [p for found in pool.map(download, completed) for p in found]
    client_urls = [u for o in outcomes for u in o.urls]
    checks.append(Check("every completed job's media downloads", media_problems, f"{len(completed)} completed jobs, {len(client_urls)} URLs handed to clients"))

    # Webhooks: every final one arrived, signed with the key's secret, with the job's status.
    deliveries = _by_request(receiver)
    hooked = [j for j in jobs.values() if j.webhook_url and j.status.terminal]
    missing, bad_sig, wrong = [], [], []
    signed = 0
    for job in hooked:
        secret = by_key[job.key_id].webhook_secret
        got = deliveries.get(job.id, [])
        final = [d for d in got if _final(d)]
        if not final:
            missing.append(f"{job.id} ({job.status.value}): no final webhook")
        for d in got:
            try:
                verify(secret, d.headers, d.raw, now=d.at)
                signed += 1
            except SignatureError as exc:
                bad_sig.append(f"{job.id}: {exc}")
        statuses = {str(d.body["status"]).lower() for d in final}
        if len(statuses) > 1 or (statuses and statuses != {job.status.value.lower()} and job.status is not JobStatus.ERROR):
            wrong.append(f"{job.id}: webhooks said {sorted(statuses)}, database says {job.status.value}")
    checks.append(Check("every final webhook arrived, validly signed", missing + bad_sig + wrong, f"{len(hooked)} jobs with a webhook, {signed} signed deliveries"))

    # Books: the store's invariant (one hold, one capture or release per job), then per key.
    try:
        check_books(store)
        books = []
    except AssertionError as exc:
        books = [str(exc)]
    for key in store.keys.list():
        rows = store.keys.ledger(key.id)
        top_ups = sum(r.amount_micros for r in rows if r.kind is LedgerKind.TOPUP)
        # A capture row is zero (the money left with the hold): a job's charge is what its hold
        # kept after any release.
        per_job: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            if r.job_id is not None:
                per_job[r.job_id].append(r)
        captures = sum(-sum(r.amount_micros for r in js) for js in per_job.values() if any(r.kind is LedgerKind.CAPTURE for r in js))
        if key.balance_micros != top_ups - captures:
            books.append(f"{key.id}: balance {key.balance_micros} != top-ups {top_ups} − captures {captures}")
        if key.balance_micros < 0:
            books.append(f"{key.id}: negative balance {key.balance_micros}")
    charged = sum(1 for j in jobs.values() if j.status in (JobStatus.COMPLETED, JobStatus.FAILED))
    checks.append(Check("balance = top-ups − captures for every key, none negative", books, f"{len(keys)} keys, {charged} jobs charged"))
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--heavy-clients", type=int, default=2, help="clients that send only the ~1 MP sync-url and dojo requests")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds PostgreSQL stays down")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, database dump)")
    args = parser.parse_args()
    # Stopped from outside (a test's deadline, a CI cancel): still stop the server, PostgreSQL and
    # S3 in the `finally` below rather than leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    bindir = postgres_bindir()
    if bindir is None:
        print("PostgreSQL server binaries (initdb, pg_ctl) are needed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="imagegate-fleet-"))
    print(f"working in {work}", flush=True)
    subprocess.run([sys.executable, "-m", "imagegate.cli", "fixtures", "build", str(work / "fixtures")], check=True, capture_output=True)
    config = work / "fixtures" / "imagegate.toml"
    pg = PrivatePostgres(bindir)
    receiver = Receiver().start()
    server = None
    (work / "s3").mkdir()
    try:
        pg.init()
        pg.start()
        pg.create_database("imagegate")
        with seaweed_s3(work / "s3") as s3:
            query = f"endpoint_url={s3.endpoint_url}&region=us-east-1"
            env = {
                "IMAGEGATE_API_PROCESSES": str(args.api_processes),
                "IMAGEGATE_STORAGE_URL": f"s3://{s3.bucket}/fleet?{query}",
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "IMAGEGATE_DEVICE": "cpu",
                # More worker processes than cores: one compute thread each, or their thread pools
                # fight over the cores (what an operator sets for a CPU fleet, too).
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "IMAGEGATE_SYNC_TIMEOUT_SECONDS": "300",
            }
            server = start_server(work / "server", config=config, database_url=pg.url("imagegate"), workers=args.workers, extra_env=env)
            store = open_store(pg.url("imagegate"))
            keys: dict[str, KeyInfo] = {}
            with httpx.Client(base_url=server.base_url, timeout=120) as http:
                image_bytes = (ROOT / "tests" / "data" / "astronaut_224.png").read_bytes()
                for i in range(KEYS):
                    plaintext, key = store.keys.create(name=f"fleet-{i}", balance_micros=KEY_USD * 1_000_000)
                    info = KeyInfo(key.id, plaintext, key.webhook_secret)
                    r = http.post("/v2/files", files={"file": ("street.png", image_bytes, "image/png")}, headers={SUB: plaintext})
                    r.raise_for_status()
                    info.upload_url = r.json()["url"]
                    keys[key.id] = info
                # Warm every model once (first loads are not what the fleet's steady state looks like).
                asyncio.run(_warm(server.base_url, next(iter(keys.values())), receiver.url))

            print(
                f"fleet: {args.api_processes} API processes, {args.workers} workers, PostgreSQL {pg.port}, S3 {s3.endpoint_url}; "
                f"{args.clients} clients for {args.seconds:g} s",
                flush=True,
            )
            incidents: list[Incident] = []
            started = time.monotonic()
            wall_started = time.time()
            breaker = threading.Thread(
                target=_break_things,
                args=(server, pg, started, args.seconds * 0.5, args.seconds * 0.55, args.outage, incidents),
                daemon=True,
            )
            breaker.start()
            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            per = [args.clients // args.load_processes + (i < args.clients % args.load_processes) for i in range(args.load_processes)]
            procs = []
            first = 0
            key_list = list(keys.values())
            for count in per:
                p = ctx.Process(target=_load_process, args=((server.base_url, key_list, receiver.url, first, count, args.seconds, args.heavy_clients), results))
                p.start()
                procs.append(p)
                first += count
            outcomes: list[Outcome] = []
            for _ in procs:
                outcomes += results.get()
            for p in procs:
                p.join()
            load_seconds = time.monotonic() - started
            breaker.join()

            drained = _drain(store, receiver)
            checks = audit(store, outcomes, receiver, keys, server.base_url)
            _report(args, outcomes, incidents, wall_started, load_seconds, drained, checks, server)
            return 0 if all(c.ok for c in checks) else 1
    finally:
        if server is not None:
            server.stop()
        receiver.stop()
        pg.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


async def _warm(base_url: str, key: KeyInfo, hook: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
        session = Session(http, key, hook, 0)
        for step in (Session.queue, Session.batch, Session.sync_output, Session.openai, Session.dojo, Session.sync_url):
            out = await step(session)
            if out.final != "completed":
                raise RuntimeError(f"warm-up {out.protocol} did not complete: {out}")


def _drain(store: Any, receiver: Receiver) -> float:
    """Until every job has ended and every final webhook has been delivered; returns the seconds."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_SECONDS:
        jobs = store.jobs.list()
        if all(j.status.terminal for j in jobs):
            delivered = _by_request(receiver)
            hooked = [j.id for j in jobs if j.webhook_url]
            if all(any(_final(d) for d in delivered.get(i, [])) for i in hooked):
                break
        time.sleep(0.5)
    return time.monotonic() - started


def _report(args: Any, outcomes: list[Outcome], incidents: list[Incident], wall_started: float, seconds: float, drained: float, checks: list[Check], server: Any) -> None:
    done = [o for o in outcomes if o.final is not None]
    in_window = [o for o in done if o.ended_at - wall_started <= args.seconds]
    print()
    print(f"## Fleet load test: {args.clients} clients for {args.seconds:g} s, {args.api_processes} API processes, {args.workers} workers (tiny weights, CPU)")
    print()
    for incident in incidents:
        print(f"- at {incident.at:5.1f} s: {incident.what}")
    print(f"- the last request in flight at {args.seconds:g} s ended at {seconds:.1f} s; then every job had ended and every final webhook had arrived within {drained:.1f} s")
    print()
    finals = Counter(o.final for o in done)
    print(
        f"requests ended: {len(done)} ({', '.join(f'{k} {v}' for k, v in sorted(finals.items()))}); "
        f"{len(in_window) / args.seconds:.1f} requests/s ended inside the {args.seconds:g} s window"
    )
    print()
    print("| protocol | requests | accepted | completed | submit p50 ms | submit p99 ms | end-to-end p50 ms | end-to-end p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.protocol].append(o)
    for name in sorted(groups):
        g = groups[name]
        sub = [o.submit_s for o in g if o.submit_s is not None]
        e2e = [o.end_to_end_s for o in g if o.end_to_end_s is not None]
        print(
            f"| {name} | {len(g)} | {sum(o.accepted for o in g)} | {sum(o.final == 'completed' for o in g)} | "
            f"{_ms(_percentile(sub, 50))} | {_ms(_percentile(sub, 99))} | {_ms(_percentile(e2e, 50))} | {_ms(_percentile(e2e, 99))} |"
        )
    sub = [o.submit_s for o in outcomes if o.submit_s is not None]
    e2e = [o.end_to_end_s for o in outcomes if o.end_to_end_s is not None]
    print(f"| all | {len(outcomes)} | {sum(o.accepted for o in outcomes)} | {finals.get('completed', 0)} | {_ms(_percentile(sub, 50))} | {_ms(_percentile(sub, 99))} | {_ms(_percentile(e2e, 50))} | {_ms(_percentile(e2e, 99))} |")
    print()
    errors = Counter(re.sub(r"\d{4,}", "N", e) for o in outcomes for e in o.errors)
    print("errors by kind (each failed attempt; submissions were retried with their Idempotency-Key):")
    for kind, n in errors.most_common() or [("none", 0)]:
        print(f"  {n:6d}  {kind}")
    print()
    print("| check | result | |")
    print("| --- | --- | --- |")
    for c in checks:
        print(f"| {c.name} | {'PASS' if c.ok else f'FAIL ({len(c.failures)})'} | {c.detail} |")
    for c in checks:
        for failure in c.failures[:10]:
            print(f"  {c.name}: {failure}")
    restarts = server.log().count("started worker process")
    print(f"\nworker processes started by the supervisor: {restarts} ({args.workers} at start)")


if __name__ == "__main__":
    sys.exit(main())
