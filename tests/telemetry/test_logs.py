"""Log lines in both formats: JSON objects with the request, model and worker of their context
and the traceback as a field; the text format as it always was."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Iterator

import pytest

from imagegate.telemetry import logs


@pytest.fixture()
def json_lines() -> Iterator[io.StringIO]:
    """The root handler configure_logging("json") installs, writing to a buffer."""
    logs.configure_logging("json")
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "imagegate")
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    logs.configure_logging("text")
    logs.bind_worker(None)


def records(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_the_job_context_in_every_thread_and_only_inside_it(json_lines: io.StringIO) -> None:
    log = logging.getLogger("imagegate.test")
    logs.bind_worker("host-1-abc")
    with logs.job_context("flux-dev_01", "flux-dev"):
        log.info("inside")
    thread = threading.Thread(target=log.warning, args=("from another thread %d", 7))
    thread.start()
    thread.join()
    inside, other = records(json_lines)
    assert inside["message"] == "inside" and inside["level"] == "INFO" and inside["logger"] == "imagegate.test"
    assert (inside["request_id"], inside["model"], inside["worker"]) == ("flux-dev_01", "flux-dev", "host-1-abc")
    assert other["message"] == "from another thread 7" and other["worker"] == "host-1-abc"
    assert "request_id" not in other and "model" not in other
    assert inside["time"].endswith("Z") and len(inside["time"]) == len("2025-01-01T00:00:00.000Z")


def test_an_exception_is_a_field_of_its_one_line(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("imagegate.test").exception("it failed")
    (entry,) = records(json_lines)
    assert entry["message"] == "it failed"
    assert "ValueError: bad" in entry["exception"] and "Traceback" in entry["exception"]


def test_warnings_become_json_lines(json_lines: io.StringIO) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning)
    (entry,) = records(json_lines)
    assert entry["logger"] == "py.warnings" and "deprecated thing" in entry["message"]


def test_text_lines_stay_human_readable() -> None:
    logs.configure_logging("text")
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "imagegate")
    assert [h.get_name() for h in logging.getLogger().handlers].count("imagegate") == 1
    record = logging.LogRecord("imagegate.test", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    assert handler.format(record).endswith(" INFO imagegate.test: hello there")
