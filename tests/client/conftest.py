"""The Python client against the real server (tests/conftest.py's ``server``), through the real
HTTP transport wrapped so each test can see what crossed the wire."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import RunningServer

from imagegate_client import Client

from .support import QUICK, RecordingTransport


@pytest.fixture()
def wire() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture()
def client(server: RunningServer, api_key: str, wire: RecordingTransport) -> Iterator[Client]:
    with Client(server.base_url, api_key, transport=wire, retries=QUICK, poll_interval=0.2) as c:
        yield c
