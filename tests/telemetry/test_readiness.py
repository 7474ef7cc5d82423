"""/readyz through the real server: ready only while the database answers, its schema is at head
and a live worker serves an enabled model. The server runs no embedded worker, so the registry
holds exactly the rows these tests write, as worker processes write them; a standalone
`imagegate worker --health-port` runs its jobs for flux-dev."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from faults.support import SUB, open_store, submit, wait_until
from harness import RunningServer, free_port, start_server, wait_status
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerState
from imagegate.telemetry.health import NO_WORKER, OK
from .support import TINY_JOB, scrape, value, wait_for_readiness, worker_row


@pytest.fixture(scope="module")
def workerless_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("readiness"), config=tiny_models, workers=0)
    yield srv
    srv.stop()


@pytest.fixture()
def registry(workerless_server: RunningServer) -> Iterator[JobStore]:
    """The server's own database, as a worker process on the same machine opens it."""
    store = open_store(workerless_server)
    yield store
    for row in store.workers.list():
        store.workers.deregister(row.id)
    store.dispose()


def test_healthz_answers_while_readyz_says_no_worker_serves(workerless_server: RunningServer, registry: JobStore) -> None:
    with workerless_server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        body = wait_for_readiness(client, 503)
    assert body["status"] == "unready"
    assert body["checks"] == {"database": OK, "schema": OK, "workers": NO_WORKER}
    assert "flux-dev" in body["unserved_models"]


def test_ready_once_a_live_worker_registers_and_unready_when_it_stalls_or_is_unhealthy(
    workerless_server: RunningServer, registry: JobStore
) -> None:
    with workerless_server.client() as client:
        registry.workers.register(worker_row("w-live"))
        body = wait_for_readiness(client, 200)
        assert body == {"status": "ready", "checks": {"database": OK, "schema": OK, "workers": OK}, "unserved_models": []}

        registry.workers.heartbeat("w-live", state=WorkerState.UNHEALTHY, loaded=[], current_job=None, last_error="boom")
        assert wait_for_readiness(client, 503)["checks"]["workers"] == NO_WORKER

        # Healthy again, but its last heartbeat is older than the lease (30 s): stalled.
        registry.workers.register(worker_row("w-live", heartbeat_at=time.time() - 31))
        assert wait_for_readiness(client, 503)["checks"]["workers"] == NO_WORKER


def test_a_worker_serving_only_some_models_leaves_the_others_listed(workerless_server: RunningServer, registry: JobStore) -> None:
    registry.workers.register(worker_row("w-flux-dev", models=["flux-dev"]))
    with workerless_server.client() as client:
        body = wait_for_readiness(client, 200, until=lambda b: "flux-pro" in b["unserved_models"])
    assert "flux-dev" not in body["unserved_models"]


def test_unready_while_the_database_file_is_unreachable(workerless_server: RunningServer, registry: JobStore) -> None:
    registry.workers.register(worker_row("w-live"))
    data_dir = Path(workerless_server.env["IMAGEGATE_DATA_DIR"])
    away = data_dir.with_name(data_dir.name + "-away")
    with workerless_server.client() as client:
        wait_for_readiness(client, 200)
        data_dir.rename(away)
        try:
            body = wait_for_readiness(client, 503)
        finally:
            away.rename(data_dir)
        assert body["checks"]["database"].startswith("OperationalError: unable to open database file"), body
        assert body["checks"]["schema"] == body["checks"]["workers"] == "not checked: an earlier check failed"
        wait_for_readiness(client, 200)


def test_jobs_no_worker_serves_stay_queued_and_show_in_queue_depth_and_age(workerless_server: RunningServer, registry: JobStore) -> None:
    registry.workers.register(worker_row("w-flux-dev", models=["flux-dev"]))
    key = workerless_server.create_key("1")
    with workerless_server.client() as client:
        request_id = submit(client, key, {"prompt": "a lighthouse"}, path="/flux-pro/v1/pro/textToImage")
        try:
            time.sleep(0.2)
            samples = scrape(client)
            assert value(samples, "imagegate_queue_depth", model="flux-pro") == 1
            assert value(samples, "imagegate_queue_oldest_age_seconds", model="flux-pro") >= 0.2
            assert value(samples, "imagegate_queue_depth", model="flux-dev") == 0
            assert value(samples, "imagegate_workers", state="idle") == 1
            wait_for_readiness(client, 200, until=lambda b: "flux-pro" in b["unserved_models"])
        finally:
            assert client.put(f"/v2/requests/{request_id}/cancel", headers={SUB: key}).json()["status"] == "CANCELED"


@pytest.fixture(scope="module")
def standalone_worker(workerless_server: RunningServer) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`imagegate worker --health-port P` for flux-dev on the server's database, as an operator
    starts one on another machine; yields the process and its health port's base URL."""
    port = free_port()
    log = Path(workerless_server.env["IMAGEGATE_DATA_DIR"]) / "standalone-worker.log"
    cmd = [sys.executable, "-m", "imagegate.cli", "worker", "--config", str(workerless_server.config)]
    cmd += ["--models", "flux-dev", "--health-port", str(port)]
    proc = subprocess.Popen(cmd, env=workerless_server.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 120, "the worker's health port")
    yield proc, base
    proc.terminate()
    proc.wait(60)


def test_standalone_worker_health_port_answers_health_readiness_and_its_own_metrics(
    workerless_server: RunningServer, standalone_worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    _proc, base = standalone_worker
    with httpx.Client(base_url=base, timeout=10) as port:
        assert port.get("/healthz").json() == {"status": "ok"}
        assert wait_for_readiness(port, 200) == {"status": "ready", "checks": {"database": OK, "schema": OK, "worker": OK}}
        assert port.get("/nope").status_code == 404

        key = workerless_server.create_key("1")
        with workerless_server.client() as client:
            request_id = submit(client, key, TINY_JOB)
            assert wait_status(client, request_id, key)["status"] == "COMPLETED"

        samples = scrape(port)
    assert value(samples, "imagegate_jobs_total", model="flux-dev", status="COMPLETED") == 1
    assert value(samples, "imagegate_job_run_seconds_count", model="flux-dev") == 1
    # The worker's port shows this process only: no cluster gauges, no API requests.
    assert not [name for name, _ in samples if name in ("imagegate_queue_depth", "imagegate_requests_total")]
