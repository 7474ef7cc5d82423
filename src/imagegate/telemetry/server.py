"""The small HTTP port of a standalone worker (``imagegate worker --health-port P``):
``/healthz``, ``/readyz`` (the worker's own view, see :mod:`.health`) and ``/metrics`` (this
process's metrics), from a stdlib server thread: a worker has no web framework to spare.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from imagegate.config import Settings
from imagegate.jobs.store import JobStore
from imagegate.telemetry import multiprocess
from imagegate.telemetry.health import Readiness
from imagegate.telemetry.logs import bind_worker, route_model_library_logs
from imagegate.telemetry.metrics import CONTENT_TYPE, render

log = logging.getLogger("imagegate.health")


class HealthServer:
    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        probe = readiness

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "application/json", json.dumps({"status": "ok"}).encode())
                elif path == "/readyz":
                    report = probe.report()
                    self._send(200 if report.ready else 503, "application/json", report.model_dump_json(exclude_none=True).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE, render())
                else:
                    self._send(404, "application/json", json.dumps({"error": "Not Found", "message": path}).encode())

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # probes every few seconds would drown the worker's own lines

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="imagegate-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_worker_telemetry(settings: Settings, store: JobStore, worker_id: str, health_port: int | None) -> Callable[[], None]:
    """What a worker process reports: its id on every log line, its metrics, and (with a port)
    the health server. Returns the function that stops it."""
    bind_worker(worker_id)
    if settings.log_format == "json":
        route_model_library_logs()
    multiprocess.forget_at_exit()
    if health_port is None:
        return lambda: None
    server = HealthServer(settings.host, health_port, Readiness(settings, store, worker_id=worker_id))
    server.start()
    log.info("health port http://%s:%d (/healthz, /readyz, /metrics)", settings.host, server.port)
    return server.close
