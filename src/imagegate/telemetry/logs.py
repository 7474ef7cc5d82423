"""Logging for every imagegate process: ``serve``, its API processes, and workers.

``log_format = "text"`` (the default) keeps the human-readable ``time level logger: message``
lines. ``log_format = "json"`` writes one JSON object per line::

    {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "imagegate.jobs",
     "message": "...", "request_id": "flux-dev_01…", "model": "flux-dev", "worker": "host-42-…"}

``request_id`` and ``model`` come from context variables that the submit pipeline binds for the
request it handles (and :func:`job_context` for a job); ``worker`` is the identity of a worker
process, the same in every thread of it. A :class:`ContextFilter` on the handler adds them to the
records, so no logging call has to pass them. An exception's traceback is the ``exception`` field.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Iterator

from imagegate.config import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

request_id_var: ContextVar[str | None] = ContextVar("imagegate_request_id", default=None)
model_var: ContextVar[str | None] = ContextVar("imagegate_model", default=None)
# One worker per process: a plain value rather than a context variable, which threads would not see.
_worker: str | None = None

CONTEXT_FIELDS = ("request_id", "model", "worker")


def bind_request(*, request_id: str | None = None, model: str | None = None) -> None:
    """Tag this request's (or job's) log lines from here on; ``None`` leaves a field as it is."""
    if request_id is not None:
        request_id_var.set(request_id)
    if model is not None:
        model_var.set(model)


@contextmanager
def job_context(request_id: str, model: str) -> Iterator[None]:
    """Tag the log lines written inside the block with a job's request id and model."""
    tokens = (request_id_var.set(request_id), model_var.set(model))
    try:
        yield
    finally:
        model_var.reset(tokens[1])
        request_id_var.reset(tokens[0])


def bind_worker(worker_id: str | None) -> None:
    """Tag every log line of this process, in every thread, with its worker id."""
    global _worker
    _worker = worker_id


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``model`` and ``worker`` to each record where they apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = {"request_id": request_id_var.get(), "model": model_var.get(), "worker": _worker}
        for name, value in values.items():
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, Any] = {
            "time": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_HANDLER_NAME = "imagegate"


def configure_logging(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """Send every logger's records (imagegate's, uvicorn's, libraries') to stderr in ``log_format``.

    Replaces the handler an earlier call installed, so calling it again (a worker started from
    ``serve``'s process) changes the format instead of doubling every line.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    # A warnings.warn() from a library would otherwise be a bare line of text among the JSON.
    logging.captureWarnings(log_format == "json")


def route_model_library_logs() -> None:
    """Hand torch's, transformers' and diffusers' records to the handler of :func:`configure_logging`.

    Each of them installs a stderr handler of its own when imported and stops its records from
    propagating, so in JSON mode their warnings would be bare text lines among the JSON. A worker
    imports them for its first job anyway; in JSON mode it imports them at start and takes their
    own handlers away (their levels stay as they set them), and their progress bars, which
    write to the terminal directly.
    """
    import torch._logging._internal as torch_logs
    from diffusers.utils import logging as diffusers_logs
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logs

    # Only torch's registered loggers: its trace log must keep its own (normally silent) handler.
    for name in torch_logs.log_registry.get_log_qnames():
        torch_logs._clear_handlers(logging.getLogger(name))
        logging.getLogger(name).propagate = True
    for library in (transformers_logs, diffusers_logs):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
    disable_progress_bars()
