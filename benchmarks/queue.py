"""Queue benchmark: submit throughput, enqueue-to-start latency, status-poll throughput and the
end-to-end latency of a tiny-model job, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/queue.py [--seconds 5] [--skip-postgres]

Starts real servers (`imagegate serve`) on loopback with tiny fixture weights and drives them
from separate load-generator processes using keep-alive HTTP connections. Prints a table.
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
from pathlib import Path

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


def measure(label: str, database_url: str | None, latency_database_url: str | None, config: Path, seconds: float, api_processes: int, clients: int) -> dict[str, str]:
    from imagegate.jobs.store import JobStore

    row: dict[str, str] = {"database": label}
    data = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    env = {"IMAGEGATE_RATE_LIMIT_PER_SECOND": "0", "IMAGEGATE_WORKER_POLL_INTERVAL_S": "0.005"}
    # 1. Submits and polls against a server without workers: the queue alone.
    idle = start_server(
        data / "idle", config=config, database_url=database_url, workers=0, extra_env={**env, "IMAGEGATE_API_PROCESSES": str(api_processes)}
    )
    try:
        key = idle.create_key("1000000")
        headers = {"X-Secret-Key": key, "Content-Type": "application/json"}
        rate, errors = throughput(idle.base_url, "POST", SUBMIT_PATH, SUBMIT_BODY, headers, seconds, clients)
        row["submits/s"] = f"{rate:,.0f}" + (f" ({errors} err)" if errors else "")
        conn = http.client.HTTPConnection(*idle.base_url.removeprefix("http://").split(":"))
        conn.request("POST", SUBMIT_PATH, body=SUBMIT_BODY, headers=headers)
        request_id = json.loads(conn.getresponse().read())["requestId"]
        conn.close()
        rate, errors = throughput(idle.base_url, "GET", f"/v2/requests/status/{request_id}", None, {"Ocp-Apim-Subscription-Key": key}, seconds, clients)
        row["status polls/s"] = f"{rate:,.0f}" + (f" ({errors} err)" if errors else "")
    finally:
        idle.stop()
    # 2. Latency with one worker and tiny weights on an empty queue (a database of its own: the
    # throughput run above left thousands of queued jobs): jobs submitted one at a time.
    busy = start_server(data / "busy", config=config, database_url=latency_database_url, workers=1, extra_env=env)
    try:
        key = busy.create_key("1000000")
        host, port = busy.base_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        body = json.dumps({"prompt": "a lighthouse at dawn", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "output_format": "png", "enable_safety_checker": False})
        hdr = {"Ocp-Apim-Subscription-Key": key, "Content-Type": "application/json"}
        end_to_end: list[float] = []
        ids: list[str] = []
        for i in range(60):
            t0 = time.perf_counter()
            conn.request("POST", "/flux-dev/v1/dev/textToImage", body=body, headers=hdr)
            request_id = json.loads(conn.getresponse().read())["request_id"]
            while True:
                conn.request("GET", f"/v2/requests/status/{request_id}", headers=hdr)
                status = json.loads(conn.getresponse().read())["status"]
                if status in ("COMPLETED", "FAILED", "ERROR"):
                    break
                time.sleep(0.002)
            assert status == "COMPLETED", status
            if i >= 5:  # the first jobs load the model
                end_to_end.append(time.perf_counter() - t0)
                ids.append(request_id)
            time.sleep(0.05)  # let the worker go idle, as a fresh submit would find it
        conn.close()
        store = JobStore(latency_database_url or f"sqlite:///{data / 'busy' / 'imagegate.db'}")
        starts = [(j.started_at - j.created_at) * 1000 for j in (store.jobs.get(i) for i in ids)]
        store.dispose()
        row["enqueue→start p50 ms"] = f"{statistics.median(starts):.1f}"
        row["enqueue→start p99 ms"] = f"{percentile(starts, 99):.1f}"
        row["tiny job end-to-end p50 ms"] = f"{statistics.median(end_to_end) * 1000:.0f}"
    finally:
        busy.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--api-processes", type=int, default=2, help="api_processes of the throughput server")
    parser.add_argument("--clients", type=int, default=8, help="load-generator processes (one keep-alive connection each)")
    args = parser.parse_args()
    fixtures = Path(tempfile.mkdtemp(prefix="bench-fixtures-"))
    subprocess.run([sys.executable, "-m", "imagegate.cli", "fixtures", "build", str(fixtures)], check=True, capture_output=True)
    config = fixtures / "imagegate.toml"
    rows = [measure("SQLite", None, None, config, args.seconds, args.api_processes, args.clients)]
    if not args.skip_postgres and _postgres_available():
        import psycopg

        names = [f"imagegate_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        try:
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            rows.append(measure("PostgreSQL", f"{base}/{names[0]}", f"{base}/{names[1]}", config, args.seconds, args.api_processes, args.clients))
        finally:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                for name in names:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    columns = list(rows[0])
    print(
        f"\nqueue benchmark ({os.cpu_count()} cores; throughput: api_processes={args.api_processes}, {args.clients} client "
        f"processes, {args.seconds:g} s per run; latency: 1 worker, tiny FLUX.1 64x64 1 step)\n"
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in columns) + " |")


if __name__ == "__main__":
    main()
