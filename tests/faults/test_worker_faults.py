"""Faults inside the worker, through the real `imagegate serve` with its embedded worker:
a SIGKILLed worker, a model that raises, storage that refuses writes, a request that runs out of
memory; and the Idempotency-Key header on a queue, a sync and a dojo route.

One server (SQLite, 2 s leases, a 1.1 GB worker memory limit) serves the whole module; every
test ends with the books checked: each key's balance equals its ledger, and every job has one
final status with exactly the ledger rows that status calls for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imagegate.jobs import schema
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import JobStore

from .support import (
    FAST,
    FLUX_DEV,
    FLUX_DEV_PRICE,
    SUB,
    Receiver,
    alive,
    balance,
    check_books,
    new_key,
    open_store,
    read_limits,
    server_env,
    slow,
    start_server,
    status,
    submit,
    wait_running,
    wait_status,
    wait_terminal,
    wait_until,
    wait_workers,
    worker_pids,
)

MEMORY_LIMIT_GB = 1.1
FLUX_PRO = "/flux-pro/v1/pro/textToImage"
ULTRA = "/pro1.1/v1/pro1.1ultra/generateRequest"
KLEIN = "/flux-2-klein-4b/v1/generateImage"
DOJO = "/api/v1/models/boogu-image-edit/run"


def _write_toml(models: dict[str, dict[str, Any]], path: Path) -> None:
    lines = []
    for model_id, values in models.items():
        lines.append(f"[models.{model_id}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def faulty_config(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fixture config, with two models bound to broken copies of the FLUX.1 checkpoint:

    - flux-pro: RoPE axes that do not add up to the head size. It loads (RoPE has no weights) and
      raises inside the transformer on every call: an engine exception at inference time.
    - flux-pro-1-1: twice the attention heads the weights were saved with: loading raises.
    """
    root = tmp_path_factory.mktemp("faulty-models")
    with tiny_models.open("rb") as fh:
        models = tomllib.load(fh)["models"]
    for values in models.values():
        weights = values.get("weights", "")
        if weights.startswith(("./", "../")):
            values["weights"] = str((tiny_models.parent / weights).resolve())
    source = Path(models["flux-dev"]["weights"])

    def broken(name: str, **config: Any) -> str:
        target = root / name
        shutil.copytree(source, target)
        path = target / "transformer" / "config.json"
        data = json.loads(path.read_text())
        data.update(config)
        path.write_text(json.dumps(data))
        return str(target)

    models["flux-pro"] = {"weights": broken("rope-mismatch", axes_dims_rope=[4, 6, 8])}
    models["flux-pro-1-1"] = {"weights": broken("head-mismatch", num_attention_heads=4)}
    config = root / "imagegate.toml"
    _write_toml(models, config)
    return config


@pytest.fixture(scope="module")
def srv(faulty_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_server(
        tmp_path_factory.mktemp("worker-faults"),
        config=faulty_config,
        extra_env={
            **server_env(lease_seconds=2, worker_memory_limit_gb=MEMORY_LIMIT_GB),
            # Each compute thread's stack counts against the limit: fix their number so the
            # headroom below does not depend on the machine's core count.
            "OMP_NUM_THREADS": "2",
            "MKL_NUM_THREADS": "2",
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(srv: Any) -> Iterator[JobStore]:
    s = open_store(srv)
    yield s
    s.dispose()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_killed_worker_job_is_claimed_again_and_completes_once(srv: Any, store: JobStore, receiver: Receiver) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    with srv.client() as client:
        job_id = submit(client, key, slow(30, side=512), **{"X-Webhook-URL": receiver.url})  # still running at the kill
        wait_running(client, key, job_id)
        [old] = worker_pids(srv)
        assert store.jobs.get(job_id).attempts == 1
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        [new] = wait_workers(srv, exclude=[old], timeout=60)
        restarted = time.monotonic() - killed
        wait_until(lambda: store.jobs.get(job_id).attempts >= 2, 120, "the job to be claimed again")
        reclaimed = time.monotonic() - killed
        done = wait_status(client, job_id, key)
        completed = time.monotonic() - killed
        assert done["status"] == "COMPLETED", done
        assert client.get(done["output"]["media_url"][0]).status_code == 200
    print(f"\nMEASURE worker SIGKILL: restarted after {restarted:.1f}s, job re-claimed after {reclaimed:.1f}s, completed after {completed:.1f}s")
    assert not alive(old) and new != old
    job = store.jobs.get(job_id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 2
    stories = check_books(store)
    assert stories[job_id] == ["hold", "capture"]
    assert before - balance(store, key_id) == FLUX_DEV_PRICE
    # Completed once: one final event, whatever the number of claims.
    receiver.wait_terminal([job_id])
    assert len(receiver.terminal_ids(job_id)) == 1
    assert {d.status for d in receiver.for_job(job_id)} == {"COMPLETED"}


def test_engine_failure_is_error_not_charged_and_the_worker_goes_on(srv: Any, store: JobStore) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    pids = wait_workers(srv)
    with srv.client() as client:
        raising = submit(client, key, {**FAST, "prompt": "raises in the transformer"}, FLUX_PRO)
        unloadable = submit(
            client, key, {"prompt": "cannot load", "aspect_ratio": "1:1", "enable_safety_checker": False}, ULTRA
        )
        good = submit(client, key, {**FAST, "prompt": "after the failures"})
        results = {i: wait_status(client, i, key) for i in (raising, unloadable, good)}
    assert results[raising]["status"] == "ERROR", results[raising]
    message = results[raising]["error"]
    assert message.startswith("flux-pro: ") and "must match the size" in message and message.endswith("(not charged)")
    assert results[unloadable]["status"] == "ERROR", results[unloadable]
    message = results[unloadable]["error"]
    assert message.startswith("flux-pro-1-1: cannot load FluxPipeline: ") and "shape" in message, message
    assert message.endswith("(not charged)")
    assert results[raising]["output"] is None and results[unloadable]["output"] is None
    assert results[good]["status"] == "COMPLETED", results[good]
    assert worker_pids(srv) == pids  # the same process handled all three
    stories = check_books(store)
    assert stories[raising] == stories[unloadable] == ["hold", "release"]
    assert before - balance(store, key_id) == FLUX_DEV_PRICE


def test_storage_failure_is_error_not_charged_and_the_next_job_succeeds(srv: Any, store: JobStore) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    pids = wait_workers(srv)
    media = (Path(srv.env["IMAGEGATE_DATA_DIR"]) / "media").resolve()
    assert media.is_dir()  # earlier jobs stored their outputs here
    moved = media.with_name("media.moved")
    with srv.client() as client:
        # A file where the media directory should be: no new directory can be made in it, even by root.
        media.rename(moved)
        media.write_text("not a directory")
        try:
            failed = submit(client, key, {**FAST, "prompt": "nowhere to put it"})
            result = wait_status(client, failed, key)
        finally:
            media.unlink()
            moved.rename(media)
        assert result["status"] == "ERROR", result
        assert "could not store" in result["error"] and str(media) in result["error"], result["error"]
        assert result["error"].endswith("(not charged)") and result["output"] is None
        good = submit(client, key, {**FAST, "prompt": "the disk is back"})
        done = wait_status(client, good, key)
        assert done["status"] == "COMPLETED", done
        assert client.get(done["output"]["media_url"][0]).status_code == 200
    assert worker_pids(srv) == pids
    stories = check_books(store)
    assert stories[failed] == ["hold", "release"] and stories[good] == ["hold", "capture"]
    assert before - balance(store, key_id) == FLUX_DEV_PRICE


def test_out_of_memory_is_error_not_charged_and_the_worker_survives(srv: Any, store: JobStore) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    [pid] = wait_workers(srv)
    # The operator setting reached the worker process (it applies it as it starts).
    limit = wait_until(lambda: (v := read_limits(pid)["Max data size"]) != "unlimited" and v, 60, "the worker's memory limit")
    assert limit == str(int(MEMORY_LIMIT_GB * 2**30))
    # One 2048² image decodes through ~1.4 GB of activations with the tiny VAE, close enough to
    # the limit that allocator luck decides; two in one batch are well past it. 64² jobs peak
    # near 0.5 GB.
    big = {**FAST, "prompt": "larger than the worker may allocate", "image_size": {"width": 2048, "height": 2048}, "num_images": 2}
    with srv.client() as client:
        started = time.monotonic()
        too_big = submit(client, key, big)
        after = submit(client, key, {**FAST, "prompt": "small enough"})
        result = wait_status(client, too_big, key)
        failed_after = time.monotonic() - started
        done = wait_status(client, after, key)
    assert result["status"] == "ERROR", result
    print(f"\nMEASURE out of memory: ERROR after {failed_after:.1f}s: {result['error'][:160]}")
    message = result["error"]
    assert message.startswith("flux-dev: ") and message.endswith("(not charged)")
    assert "can't allocate memory" in message or "out of memory" in message, message
    assert done["status"] == "COMPLETED", done
    assert worker_pids(srv) == [pid]  # caught in the worker, not a crash and restart
    stories = check_books(store)
    assert stories[too_big] == ["hold", "release"] and stories[after] == ["hold", "capture"]
    assert before - balance(store, key_id) == FLUX_DEV_PRICE


# -- Idempotency-Key --------------------------------------------------------------------------------


def _jobs_with_key(store: JobStore, key_id: str, idempotency_key: str) -> list[Any]:
    return [j for j in store.jobs.list(key_id=key_id) if j.idempotency_key == idempotency_key]


def test_idempotency_key_on_a_queue_route(srv: Any, store: JobStore) -> None:
    key, key_id = new_key(store, 10)
    other, _ = new_key(store, 10)
    before = balance(store, key_id)
    body = {**FAST, "prompt": "an idempotent harbour"}
    idem = {"Idempotency-Key": "queue-route-1"}
    with srv.client() as client:
        first = client.post(FLUX_DEV, json=body, headers={SUB: key, **idem})
        assert first.status_code == 202, first.text
        job_id = first.json()["request_id"]

        def again(_: int) -> tuple[int, str]:
            with srv.client() as c:
                r = c.post(FLUX_DEV, json=body, headers={SUB: key, **idem})
                return r.status_code, r.json().get("request_id", r.text)

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(again, range(8)))
        assert replies == [(202, job_id)] * 8
        conflict = client.post(FLUX_DEV, json={**body, "seed": 5}, headers={SUB: key, **idem})
        assert conflict.status_code == 409, conflict.text
        assert "Idempotency-Key" in conflict.text
        # Keys are per API key: another key's request with the same header is its own job.
        foreign = submit(client, other, body, **idem)
        assert foreign != job_id
        assert wait_status(client, job_id, key)["status"] == "COMPLETED"
        assert wait_status(client, foreign, other)["status"] == "COMPLETED"
        # The replay after completion still answers with the original request.
        replay = client.post(FLUX_DEV, json=body, headers={SUB: key, **idem})
        assert replay.status_code == 202 and replay.json()["request_id"] == job_id
        assert status(client, key, job_id)["status"] == "COMPLETED"
    assert len(_jobs_with_key(store, key_id, "queue-route-1")) == 1
    assert before - balance(store, key_id) == FLUX_DEV_PRICE
    # Past the 24 h window the key names a new request (the job is aged in the database).
    with store.engine.begin() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.id == job_id).values(created_at=time.time() - 25 * 3600))
    with srv.client() as client:
        later = submit(client, key, body, **idem)
        assert later != job_id
        assert wait_status(client, later, key)["status"] == "COMPLETED"
    assert before - balance(store, key_id) == 2 * FLUX_DEV_PRICE
    check_books(store)


def test_idempotency_key_on_a_sync_route(srv: Any, store: JobStore) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    body = {"prompt": "a lighthouse at dawn", "steps": 1, "width": 512, "height": 512, "seed": 3}
    idem = {"Idempotency-Key": "sync-route-1"}
    with srv.client() as client:
        first = client.post(KLEIN, json=body, headers={SUB: key, **idem})
        assert first.status_code == 200, first.text
        second = client.post(KLEIN, json=body, headers={SUB: key, **idem})
        assert second.status_code == 200, second.text
        assert second.json() == first.json()  # the same stored output, not a second run
        conflict = client.post(KLEIN, json={**body, "seed": 4}, headers={SUB: key, **idem})
        assert conflict.status_code == 409, conflict.text
    [job] = _jobs_with_key(store, key_id, "sync-route-1")
    assert job.status is JobStatus.COMPLETED and job.price_micros > 0
    assert first.json()["output"].endswith(job.output["media"][0]["key"].split("/", 1)[1])
    assert before - balance(store, key_id) == job.price_micros
    assert check_books(store)[job.id] == ["hold", "capture"]


def test_idempotency_key_on_the_dojo_route(srv: Any, store: JobStore, image_host: Any) -> None:
    key, key_id = new_key(store, 10)
    before = balance(store, key_id)
    auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "dojo-route-1"}
    # The input is missing on the image host, so the job ends FAILED (charged) without a model.
    body = {"prompt": "make it winter", "image": f"{image_host.base_url}/not-there.png", "image_size": "square"}
    with srv.client() as client:
        first = client.post(DOJO, json=body, headers=auth)
        assert first.status_code == 200, first.text
        job_id = first.json()["jobId"]
        second = client.post(DOJO, json=body, headers=auth)
        assert second.status_code == 200, second.text
        assert second.json()["jobId"] == job_id
        conflict = client.post(DOJO, json={**body, "prompt": "make it summer"}, headers=auth)
        assert conflict.status_code == 409, conflict.text
    job = wait_terminal(store, [job_id])[job_id]
    assert job.status is JobStatus.FAILED and "not-there.png" in (job.error or "")
    assert len(_jobs_with_key(store, key_id, "dojo-route-1")) == 1
    assert before - balance(store, key_id) == job.price_micros > 0
    assert check_books(store)[job_id] == ["hold", "capture"]
