"""Servers and hosts for the hostile-input tests.

Three real `imagegate serve` processes, each configured for what it is used for:

* ``hostile_server``: one worker, private URLs allowed (so the loopback hostile host is
  reachable), a 2 s fetch bound and a 256 KB input limit, so slow and oversize inputs end fast.
* ``strict_server``: one worker, private URLs refused (the production default).
* ``idle_server``: no worker, so fuzzed requests that pass validation stay queued and cost no
  CPU; synchronous styles give up after half a second.

No weights are configured: the upscaler is built in, and generative models end in ERROR (not
charged) if a job for them ever runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import RunningServer, start_server

from .support import FETCH_TIMEOUT_S, MAX_INPUT_BYTES, HostileHost, start_hostile_host


@pytest.fixture(scope="session")
def hostile_host() -> Iterator[HostileHost]:
    host = start_hostile_host("127.0.0.1")
    yield host
    host.close()


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, workers: int, env: dict[str, str]) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp(name), config=None, workers=workers, extra_env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(
        tmp_path_factory,
        "hostile",
        1,
        {
            "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
            "IMAGEGATE_FETCH_TIMEOUT_SECONDS": str(FETCH_TIMEOUT_S),
            "IMAGEGATE_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
        },
    )


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(
        tmp_path_factory,
        "strict",
        1,
        {"IMAGEGATE_ALLOW_PRIVATE_URLS": "false", "IMAGEGATE_FETCH_TIMEOUT_SECONDS": str(FETCH_TIMEOUT_S)},
    )


@pytest.fixture(scope="session")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _serve(
        tmp_path_factory,
        "idle",
        0,
        {"IMAGEGATE_SYNC_TIMEOUT_SECONDS": "0.5", "IMAGEGATE_BATCH_WAIT_SECONDS": "0.5"},
    )
