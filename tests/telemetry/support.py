"""What the telemetry tests share: a worker's registry row, scraping and parsing /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import time

from harness import worker_row  # noqa: F401  (the row a worker registers, shared with other tests)

# The smallest flux-dev job: seconds on a CPU with the tiny fixture weights.
TINY_JOB = {"prompt": "a lighthouse", "num_inference_steps": 2, "image_size": {"width": 64, "height": 64}, "seed": 1}


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics, parsed: {(sample name, labels): value}."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for_readiness(
    client: httpx.Client, status: int, timeout: float = 15, until: Callable[[dict[str, Any]], bool] = lambda body: True
) -> dict[str, Any]:
    """Poll /readyz (its answer is cached for a second, so an earlier state can still show) until
    it answers ``status`` with a body that satisfies ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if r.status_code == status and until(r.json()):
            return r.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still answers {r.status_code} {r.text}")
        time.sleep(0.1)
