"""Queue benchmark, on SQLite and on PostgreSQL, each figure beside its yardstick in one run:

- submit and status-poll throughput, polls beside a bare FastAPI endpoint (benchmarks/yardstick/bare_app.py)
  served by as many uvicorn processes;
- at concurrency 1, a sync request split by the job's own timestamps: submit, enqueue→start, the
  engine, completion notice; per-job overhead (the request's time minus the engine's) beside the
  bare endpoint sleeping the same engine time;
- the statements an idle fleet of workers sends per second.

    .venv/bin/python benchmarks/queue.py [--seconds 5] [--jobs 40] [--fleet 16] [--skip-postgres]

Starts real servers (`imagegate serve`, `imagegate worker`) on loopback with tiny fixture weights
and drives them from separate load-generator processes using keep-alive HTTP connections.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `queue`, which multiprocessing imports; running it
# as a script puts its folder first on sys.path, so take that entry out before anything imports it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import http.client
import json
import multiprocessing as mp
import statistics
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from harness import POSTGRES_ADMIN_URL, _postgres_available, start_server  # noqa: E402

SUBMIT_PATH = "/flux-1-schnell/v1/getDataBatch"
SUBMIT_BODY = json.dumps({"prompt": "a lighthouse at dawn", "num_steps": 1, "width": 64, "height": 64, "webhook_url": "https://example.invalid/hook"})


def _load(args: tuple[str, int, str, str, str | None, float, dict]) -> tuple[int, int]:
    host, port, method, path, body, seconds, headers = args
    conn = http.client.HTTPConnection(host, port, timeout=30)
    ok = errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status < 300:
            ok += 1
        else:
            errors += 1
    conn.close()
    return ok, errors


def throughput(base_url: str, method: str, path: str, body: str | None, headers: dict, seconds: float, clients: int) -> tuple[float, int]:
    host, port = base_url.removeprefix("http://").split(":")
    with mp.get_context("fork").Pool(clients) as pool:
        started = time.perf_counter()
        results = pool.map(_load, [(host, int(port), method, path, body, seconds, headers)] * clients)
        elapsed = time.perf_counter() - started
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return ok / elapsed, errors


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def p50_p99(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {percentile(values, 99):.2f}"


@contextmanager
def bare_server(processes: int) -> Iterator[str]:
    """benchmarks/yardstick/bare_app.py under uvicorn with ``processes`` workers; yields its base URL."""
    from harness import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "yardstick" / "bare_app.py"), "--port", str(port), "--workers", str(processes)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/status")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def measure_throughput(row: dict[str, str], database_url: str | None, config: Path, data: Path, seconds: float, api_processes: int, clients: int) -> None:
    """Submits and status polls against a server without workers (the queue alone), and polls of
    the bare app with as many processes, in the same run."""
    env = {"IMAGEGATE_RATE_LIMIT_PER_SECOND": "0", "IMAGEGATE_API_PROCESSES": str(api_processes)}
    idle = start_server(data / "idle", config=config, database_url=database_url, workers=0, extra_env=env)
    try:
        key = idle.create_key("1000000")
        headers = {"X-Secret-Key": key, "Content-Type": "application/json"}
        rate, errors = throughput(idle.base_url, "POST", SUBMIT_PATH, SUBMIT_BODY, headers, seconds, clients)
        row["submits/s"] = f"{rate:,.0f}" + (f" ({errors} err)" if errors else "")
        conn = http.client.HTTPConnection(*idle.base_url.removeprefix("http://").split(":"))
        conn.request("POST", SUBMIT_PATH, body=SUBMIT_BODY, headers=headers)
        request_id = json.loads(conn.getresponse().read())["requestId"]
        conn.close()
        polls, errors = throughput(idle.base_url, "GET", f"/v2/requests/status/{request_id}", None, {"Ocp-Apim-Subscription-Key": key}, seconds, clients)
    finally:
        idle.stop()
    with bare_server(api_processes) as base:
        bare, _ = throughput(base, "GET", "/status", None, {}, seconds, clients)
    row["status polls/s"] = f"{polls:,.0f}" + (f" ({errors} err)" if errors else "")
    row["bare polls/s"] = f"{bare:,.0f}"
    row["polls vs bare"] = f"{polls / bare:.2f}x"


def measure_latency(row: dict[str, str], database_url: str | None, config: Path, data: Path, jobs: int) -> None:
    """Concurrency 1: a sync request (getData, tiny FLUX.1 [schnell], 64x64, 1 step) one at a
    time against one worker, split by the job's own timestamps; then the bare app sleeping the
    median engine time, in the same run. Overhead = the request's time minus the engine's."""
    from imagegate.jobs.store import JobStore

    server = start_server(data / "busy", config=config, database_url=database_url, workers=1, extra_env={"IMAGEGATE_RATE_LIMIT_PER_SECOND": "0"})
    samples: list[tuple[float, float, str]] = []
    try:
        key = server.create_key("1000000")
        host, port = server.base_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        body = json.dumps({"prompt": "a lighthouse at dawn", "num_steps": 1, "width": 64, "height": 64})
        hdr = {"Ocp-Apim-Subscription-Key": key, "Content-Type": "application/json"}
        for i in range(jobs + 5):
            sent = time.time()
            conn.request("POST", "/flux-1-schnell/v1/getData", body=body, headers=hdr)
            answer = json.loads(conn.getresponse().read())
            answered = time.time()
            if i >= 5:  # the first jobs load the model
                name = answer["output"].rsplit("/", 1)[1]
                samples.append((sent, answered, name.rsplit("-", 1)[0]))
            time.sleep(0.05)  # let the worker go idle, as a fresh submit would find it
        conn.close()
    finally:
        server.stop()
    store = JobStore(database_url or f"sqlite:///{data / 'busy' / 'imagegate.db'}")
    split: dict[str, list[float]] = {k: [] for k in ("submit", "start", "notice", "engine", "overhead", "total")}
    for sent, answered, job_id in samples:
        job = store.jobs.get(job_id)
        timings = job.output["timings"]  # type: ignore[index]
        # The model's own work: the engine and the safety model (NudeNet) that checks its image.
        engine = timings["engine_ms"] + timings["safety_ms"]
        split["submit"].append((job.created_at - sent) * 1000)
        split["start"].append((job.started_at - job.created_at) * 1000)  # type: ignore[operator]
        split["notice"].append((answered - job.completed_at) * 1000)  # type: ignore[operator]
        split["engine"].append(engine)
        split["total"].append((answered - sent) * 1000)
        split["overhead"].append((answered - sent) * 1000 - engine)
    store.dispose()
    engine_s = statistics.median(split["engine"]) / 1000
    bare: list[float] = []
    with bare_server(1) as base:
        conn = http.client.HTTPConnection(*base.removeprefix("http://").split(":"))
        for _ in range(jobs):
            started = time.perf_counter()
            conn.request("POST", f"/run?seconds={engine_s:.6f}", body=b"{}", headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            bare.append((time.perf_counter() - started - engine_s) * 1000)
            time.sleep(0.05)
        conn.close()
    row["submit ms p50/p99"] = p50_p99(split["submit"])
    row["enqueue→start ms p50/p99"] = p50_p99(split["start"])
    row["completion notice ms p50/p99"] = p50_p99(split["notice"])
    row["engine + safety model ms p50"] = f"{statistics.median(split['engine']):.0f}"
    row["per-job overhead ms p50/p99"] = p50_p99(split["overhead"])
    row["bare endpoint overhead ms p50"] = f"{statistics.median(bare):.2f}"


def measure_idle_fleet(row: dict[str, str], database_url: str | None, config: Path, data: Path, workers: int, seconds: float) -> None:
    """``workers`` idle `imagegate worker` processes on an empty queue: the statements they send
    per second, from each worker's own counter (imagegate_db_statements_total, on its health port)."""
    from harness import free_port

    server = start_server(data / "fleet", config=config, database_url=database_url, workers=0)
    ports = [free_port() for _ in range(workers)]
    env = dict(server.env)
    env.pop("IMAGEGATE_SHUTDOWN_GRACE_SECONDS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "imagegate.cli", "worker", "--config", str(config), "--health-port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        def statements() -> float:
            total = 0.0
            for port in ports:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/metrics")
                for line in conn.getresponse().read().decode().splitlines():
                    if line.startswith("imagegate_db_statements_total"):
                        total += float(line.rsplit(" ", 1)[1])
                conn.close()
            return total

        deadline = time.monotonic() + 180
        while True:  # every worker up (its health port answers) and settled
            try:
                statements()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        time.sleep(10)
        before, started = statements(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = statements(), time.monotonic() - started
        row[f"idle fleet of {workers}: statements/s"] = f"{(after - before) / elapsed:.1f}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        server.stop()


def measure(label: str, database_urls: list[str | None], config: Path, args: argparse.Namespace) -> dict[str, str]:
    row: dict[str, str] = {"database": label}
    data = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    # Each part gets a database of its own: the throughput run leaves thousands of queued jobs.
    measure_throughput(row, database_urls[0], config, data, args.seconds, args.api_processes, args.clients)
    measure_latency(row, database_urls[1], config, data, args.jobs)
    if args.fleet:
        measure_idle_fleet(row, database_urls[2], config, data, args.fleet, args.fleet_seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--api-processes", type=int, default=2, help="api_processes of the throughput server")
    parser.add_argument("--clients", type=int, default=8, help="load-generator processes (one keep-alive connection each)")
    parser.add_argument("--jobs", type=int, default=40, help="sync jobs, one at a time, for the latency split")
    parser.add_argument("--fleet", type=int, default=16, help="idle workers whose statements are counted (0: skip)")
    parser.add_argument("--fleet-seconds", type=float, default=30.0)
    args = parser.parse_args()
    fixtures = Path(tempfile.mkdtemp(prefix="bench-fixtures-"))
    subprocess.run([sys.executable, "-m", "imagegate.cli", "fixtures", "build", str(fixtures)], check=True, capture_output=True)
    config = fixtures / "imagegate.toml"
    rows = [measure("SQLite", [None, None, None], config, args)]
    if not args.skip_postgres and _postgres_available():
        import psycopg

        names = [f"imagegate_bench_{uuid.uuid4().hex[:8]}" for _ in range(3)]
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        try:
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            rows.append(measure("PostgreSQL", [f"{base}/{name}" for name in names], config, args))
        finally:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                for name in names:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"\nqueue benchmark ({os.cpu_count()} cores; throughput: api_processes={args.api_processes}, {args.clients} client "
        f"processes, {args.seconds:g} s per run; latency: 1 worker, sync getData of tiny FLUX.1 [schnell] 64x64 1 step, "
        f"{args.jobs} jobs one at a time; idle fleet: {args.fleet} workers, {args.fleet_seconds:g} s)\n"
    )
    # One row per measure, one column per database: the table stays narrow.
    print("| | " + " | ".join(row["database"] for row in rows) + " |")
    print("|---|" + "|".join("---" for _ in rows) + "|")
    for name in [c for c in rows[0] if c != "database"]:
        print(f"| {name} | " + " | ".join(row.get(name, "") for row in rows) + " |")


if __name__ == "__main__":
    main()
