"""/metrics and JSON logs of `imagegate serve` with two API processes and one embedded worker:
every process's counters add up in whichever process answers the scrape, the worker's job
metrics and the deliverer's webhook outcomes among them; every log line is one JSON object."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.mmap_dict import MmapedDict

from faults.support import SUB, Receiver, submit, wait_until
from harness import RunningServer, start_server, wait_status
from imagegate.telemetry.metrics import STALLED, UNMATCHED_ROUTE

from .support import TINY_JOB, scrape, value

STATUS_ROUTE = "/v2/requests/status/{request_id}"
ALLOWED_LABELS = {"route", "code", "model", "status", "outcome", "state", "worker", "kind", "role", "le"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def fleet_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"IMAGEGATE_API_PROCESSES": "2", "IMAGEGATE_LOG_FORMAT": "json", "IMAGEGATE_DEVICE": "cpu"}
    srv = start_server(tmp_path_factory.mktemp("fleet"), config=tiny_models, extra_env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def finished_job(fleet_server: RunningServer, receiver: Receiver) -> dict[str, Any]:
    """One tiny flux-dev job with a webhook, completed and its webhook delivered."""
    key = fleet_server.create_key("10")
    with fleet_server.client() as client:
        request_id = submit(client, key, TINY_JOB, **{"X-Webhook-URL": receiver.url})
        done = wait_status(client, request_id, key)
    assert done["status"] == "COMPLETED", done
    receiver.wait_terminal([request_id])
    return {"key": key, "request_id": request_id}


def metrics_dir(server: RunningServer) -> Path:
    return Path(server.env["IMAGEGATE_DATA_DIR"]) / "metrics"


def requests_by_process(server: RunningServer, route: str, code: str) -> dict[str, float]:
    """The request counter as each process wrote it to its own file of the shared directory."""
    counts: dict[str, float] = {}
    for path in metrics_dir(server).glob("counter_*.db"):
        for key, count, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            if sample == "imagegate_requests_total" and labels == {"route": route, "code": code}:
                counts[path.name] = counts.get(path.name, 0) + count
    return counts


def test_request_counts_of_both_api_processes_add_up_in_every_scrape(fleet_server: RunningServer, finished_job: dict[str, Any]) -> None:
    key = finished_job["key"]
    sent = 0
    with fleet_server.client() as client, ThreadPoolExecutor(8) as pool:

        def miss(_: int) -> int:
            return client.get("/v2/requests/status/flux-dev_missing", headers={SUB: key}).status_code

        def two_processes_answered() -> bool:
            nonlocal sent
            assert set(pool.map(miss, range(20))) == {404}
            sent += 20
            return len(requests_by_process(fleet_server, STATUS_ROUTE, "404")) >= 2

        wait_until(two_processes_answered, 60, "both API processes to answer a request")
        for _ in range(6):  # each scrape lands on either process
            assert value(scrape(client), "imagegate_requests_total", route=STATUS_ROUTE, code="404") == sent
    assert sum(requests_by_process(fleet_server, STATUS_ROUTE, "404").values()) == sent


def test_worker_job_metrics_and_webhook_outcomes_appear_in_the_api_scrape(fleet_server: RunningServer, finished_job: dict[str, Any]) -> None:
    with fleet_server.client() as client:
        samples = scrape(client)
    assert value(samples, "imagegate_jobs_total", model="flux-dev", status="COMPLETED") == 1
    assert value(samples, "imagegate_job_queue_seconds_count", model="flux-dev") == 1
    assert value(samples, "imagegate_job_run_seconds_count", model="flux-dev") == 1
    assert 0 < value(samples, "imagegate_job_run_seconds_sum", model="flux-dev") < 120
    assert value(samples, "imagegate_charged_usd_total", model="flux-dev") == pytest.approx(0.025)
    assert value(samples, "imagegate_webhook_deliveries_total", outcome="delivered") == 1
    assert value(samples, "imagegate_database_up") == 1
    assert value(samples, "imagegate_queue_depth", model="flux-dev") == 0
    assert value(samples, "imagegate_queue_oldest_age_seconds", model="flux-dev") == 0
    assert value(samples, "imagegate_webhook_backlog") == 0
    for state in ("idle", "busy", "unhealthy", STALLED):
        assert value(samples, "imagegate_workers", state=state) is not None
    assert value(samples, "imagegate_models_loaded", model="flux-dev") is not None
    # CPU only: no GPU memory series.
    assert not [name for name, _ in samples if name.startswith("imagegate_gpu_memory")]
    labels = {name for _, pairs in samples for name, _ in pairs}
    assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS


def test_unmatched_paths_share_one_route_label(fleet_server: RunningServer) -> None:
    with fleet_server.client() as client:
        for path in ("/no/such/path", "/another/missing/one"):
            assert client.get(path).status_code == 404
        samples = scrape(client)
    assert value(samples, "imagegate_requests_total", route=UNMATCHED_ROUTE, code="404") >= 2
    assert not [pairs for name, pairs in samples if name == "imagegate_requests_total" and ("route", "/no/such/path") in pairs]


def test_every_log_line_is_json_and_job_lines_carry_request_id_model_and_worker(
    fleet_server: RunningServer, finished_job: dict[str, Any]
) -> None:
    lines = [line for line in fleet_server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    ended = [e for e in entries if e.get("request_id") == finished_job["request_id"]]
    assert ended, "no log line names the job"
    assert all(e["model"] == "flux-dev" for e in ended)
    assert any(e.get("worker") and "COMPLETED" in e["message"] for e in ended)
