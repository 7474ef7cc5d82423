"""One metrics directory for all the processes of one ``imagegate serve``.

prometheus_client keeps a process's metrics in memory unless ``PROMETHEUS_MULTIPROC_DIR`` names a
directory when it is first imported; then every process writes its counters, histograms and
gauges to files of its own there, and ``/metrics`` in any API process adds up all of them (the
workers' job counters included). ``imagegate serve`` empties the directory and sets the variable
before it imports anything that records a metric; the API and worker processes it starts inherit
it. A standalone ``imagegate worker`` keeps its metrics in memory and serves them itself.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(directory: Path) -> None:
    """Start ``directory`` empty and make this process and its children write their metrics there."""
    if "prometheus_client" in sys.modules:
        # Its storage is chosen once, at import: setting the variable now would silently leave
        # this process's metrics out of every other process's /metrics.
        raise RuntimeError("share_between_processes() must run before prometheus_client is imported")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[ENV] = str(directory)


def shared() -> bool:
    """Whether this process writes its metrics to the shared directory."""
    return bool(os.environ.get(ENV))


def forget_at_exit() -> None:
    """Drop this process's live gauges (GPU memory) from the directory when it exits."""
    if not shared():
        return
    from prometheus_client import multiprocess

    atexit.register(multiprocess.mark_process_dead, os.getpid())
