"""What one cheap request may cost the server, measured on the real one: the worker's peak memory
for hostile dataset zips, and the disk the LoRA cache holds after hostile LoRA requests.

Own server: a fresh worker, so its peak resident memory (VmHWM) is this module's doing. No weights
are configured, so a job whose inputs pass ends ERROR (weights missing, not charged) right after
its inputs were read: what is measured is reading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RunningServer, peak_rss, start_server, zip_of

from .support import (
    SUB,
    HostileHost,
    bilevel_png,
    data_uri,
    safetensors_of,
    small_png,
    truncated_png,
    wait_terminal,
)

TRAINER_831 = "/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request"
RELIGHT = "/pixelforge-relighting-api/v1/relighting/generate"
MiB = 1024 * 1024
FORTY_MP = 6324  # 6324² = 39,992,976 pixels: just under the 40 MP per-image limit
# What reading a dataset may add to the worker's peak: one image decoding at a time (a 40 MP
# one-bit PNG is 40 MB in Pillow, and as much again in 8-bit grey), plus the small copies kept.
DATASET_PEAK_BOUND = 300 * MiB
LORA_CACHE_BYTES = 200 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(
        tmp_path_factory.mktemp("budgets"), config=None, workers=1,
        extra_env={"IMAGEGATE_LORA_CACHE_GB": str(LORA_CACHE_BYTES / 2**30)},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server: RunningServer) -> str:
    return server.create_key("100", name="budgets")


def worker_peak(server: RunningServer) -> tuple[int, int]:
    (pid,) = server.worker_pids()
    return pid, peak_rss(pid)


def submit(server: RunningServer, key: str, path: str, body: dict) -> dict:
    with server.client() as client:
        r = client.post(path, json=body, headers={SUB: key})
        assert r.status_code == 202, r.text
        return wait_terminal(client, r.json()["request_id"], key, timeout=300)


def bomb_zip(count: int, last: bytes | None = None) -> str:
    files = {f"{i:02}.png": bilevel_png(FORTY_MP, FORTY_MP) for i in range(count)}
    if last is not None:
        files["zz.png"] = last
    return data_uri(zip_of(files), "application/zip")


def test_a_dataset_over_the_pixel_budget_is_refused_from_its_headers(server: RunningServer, key: str) -> None:
    # 16 one-bit 40 MP pictures in a few KB: 640 MP against the 500 MP budget. Decoded whole
    # and held at once, as they once were, they took 2.6 GB.
    pid, before = worker_peak(server)
    done = submit(server, key, TRAINER_831, {"image_data_url": bomb_zip(16), "steps": 1})
    assert done["status"] == "FAILED", done
    assert done["error"].startswith("image_data_url: the images add up to more than the 500,000,000 pixel limit")
    after_pid, after = worker_peak(server)
    assert after_pid == pid and after - before < 32 * MiB, (after - before) / MiB


def test_a_dataset_within_the_budget_is_decoded_image_by_image_at_the_training_size(server: RunningServer, key: str) -> None:
    # 12 × 40 MP = 480 MP passes the budget and is decoded: one picture at a time, each scaled
    # to 512² as it is decoded. Held whole in RGB they would need 1.4 GB. The last member's
    # pixel data is cut short, so the job ends (FAILED) once all the others were decoded, before
    # any model code is imported into the worker.
    pid, before = worker_peak(server)
    done = submit(server, key, TRAINER_831, {"image_data_url": bomb_zip(12, last=truncated_png()), "steps": 1})
    assert done["status"] == "FAILED", done
    assert done["error"].startswith("image_data_url: zz.png: is not a decodable image"), done
    after_pid, after = worker_peak(server)
    assert after_pid == pid, "the worker died reading the dataset"
    assert after - before < DATASET_PEAK_BOUND, f"reading the dataset added {(after - before) / MiB:.0f} MB"


def lora(seed: int, size: int = 64 * 1024) -> bytes:
    """A valid LoRA file of about ``size`` bytes (different bytes for each seed)."""
    columns = size // (2 * 2 * 4)
    return safetensors_of({
        f"transformer.x{seed}.lora_A.weight": ("F16", [4, columns]),
        f"transformer.x{seed}.lora_B.weight": ("F16", [columns, 4]),
    })


def relight(*loras: str) -> dict:
    return {"prompt": "x", "image_urls": [data_uri(small_png())], "loras": [{"path": url} for url in loras]}


def test_failed_loras_leave_nothing_and_stop_the_request(server: RunningServer, key: str, hostile_host: HostileHost) -> None:
    cache = Path(server.env["IMAGEGATE_DATA_DIR"]) / "loras"
    kept_before = sorted(cache.iterdir()) if cache.exists() else []
    good = hostile_host.add("budget-good.safetensors", lora(seed=99), "application/octet-stream")
    for junk in (b"\x10\0\0\0\0\0\0\0{not json really}", lora(seed=1)[:-5], safetensors_of({"model.weight": ("F32", [64 * 1024])})):
        bad = hostile_host.add("budget-bad.safetensors", junk, "application/octet-stream")
        hits = len(hostile_host.hits)
        done = submit(server, key, RELIGHT, relight(bad, good))
        assert done["status"] == "FAILED" and done["error"].startswith("loras[0].path: "), done
        assert [h for h in hostile_host.hits[hits:] if "budget-good" in h] == [], "fetched after the first failure"
    assert (sorted(cache.iterdir()) if cache.exists() else []) == kept_before


def test_the_lora_cache_stays_within_lora_cache_gb(server: RunningServer, key: str, hostile_host: HostileHost) -> None:
    cache = Path(server.env["IMAGEGATE_DATA_DIR"]) / "loras"
    size = len(lora(seed=10))
    for seed in range(10, 16):
        url = hostile_host.add(f"budget-{seed}.safetensors", lora(seed=seed), "application/octet-stream")
        done = submit(server, key, RELIGHT, relight(url))
        assert done["status"] == "ERROR", done  # fetched and kept; the model itself has no weights here
        held = sum(p.stat().st_size for p in cache.iterdir())
        assert held <= LORA_CACHE_BYTES, held
    assert len(list(cache.iterdir())) == LORA_CACHE_BYTES // size
