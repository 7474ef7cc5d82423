"""benchmarks/fleet.py, briefly: the whole fleet (private PostgreSQL, SeaweedFS, 2 API processes,
4 workers, a webhook receiver), a dozen clients for a few seconds with a worker SIGKILLed and
PostgreSQL restarted half-way, and every audit check of the full run passing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faults.postgres import postgres_bindir
from media.support import weed_binary

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "every accepted request has exactly one final status",
    "every completed job's media downloads",
    "every final webhook arrived, validly signed",
    "balance = top-ups − captures for every key, none negative",
)


@pytest.mark.benchmark
def test_a_short_fleet_run_passes_every_audit_check() -> None:
    if postgres_bindir() is None or weed_binary() is None:
        pytest.skip("needs PostgreSQL's server binaries and SeaweedFS")
    argv = [sys.executable, str(ROOT / "benchmarks" / "fleet.py"), "--clients", "12", "--seconds", "12", "--outage", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script stops its server, PostgreSQL and S3 on SIGTERM
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"the fleet run did not end within 8 minutes:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
    for check in CHECKS:
        assert f"| {check} | PASS |" in out, out[-6000:]
    # Every protocol took part, and the incidents happened.
    for protocol in ("queue (polls)", "queue (events)", "batch", "sync-output", "sync-url", "dojo", "openai"):
        assert f"| {protocol} |" in out, out[-6000:]
    assert "SIGKILL worker" in out and "PostgreSQL started" in out
