"""The end-to-end harness: the real server as a subprocess, a loopback image host, PostgreSQL.

End-to-end tests drive `imagegate serve` over loopback HTTP, with keys created through the
`imagegate keys create` command, exactly as an operator would. The fixtures live in conftest.py.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

POSTGRES_ADMIN_URL = os.environ.get("IMAGEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ------------------------------------------------------------------------------------


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


# -- tiny models -------------------------------------------------------------------------------------


# -- a loopback host for input images ------------------------------------------------------------------


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of ``files`` (name -> bytes), as a client would upload a dataset."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def sample_photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, structured picture (gradients and a disc) so image models have something to keep."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x / width * 255).astype(np.uint8)
    g = (y / height * 255).astype(np.uint8)
    b = np.full_like(r, int(rng.integers(40, 200)))
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2
    r[disc], g[disc], b[disc] = 250, 250, 250
    return Image.fromarray(np.stack([r, g, b], axis=-1), "RGB")


@dataclass
class ImageHost:
    base_url: str
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[name] = (data, content_type)
        return f"{self.base_url}/{name}"


# -- the server ----------------------------------------------------------------------------------------------


# What the supervisor's worker processes run (imagegate.runtime.supervisor.worker_command).
WORKER_COMMAND = "imagegate.runtime.supervisor"


def _alive(proc_entry: Path) -> bool:
    """Running, not a zombie nobody has reaped yet."""
    try:
        state = (proc_entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class RunningServer:
    base_url: str
    config: Path | None
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    cwd: Path | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "imagegate.cli", *args]
        if self.config is not None and args[0] in ("keys", "models", "worker"):
            cmd[4:4] = ["--config", str(self.config)]
        return subprocess.run(cmd, env=self.env, cwd=self.cwd, check=check, capture_output=True, text=True, timeout=120)

    def create_key(self, balance: str = "100", name: str = "test") -> str:
        out = self.cli("keys", "create", "--balance", balance, "--name", name).stdout
        return out.strip().splitlines()[-1]

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The embedded worker processes: the serve process's children that run a worker."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and WORKER_COMMAND.encode() in cmdline and _alive(entry):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def peak_rss(pid: int) -> int:
    """The most resident memory process ``pid`` has had (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def start_server(
    data_dir: Path,
    *,
    config: Path | None,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    port: int | None = None,
) -> RunningServer:
    port = port or free_port()
    env = dict(os.environ)
    env.update(
        {
            "IMAGEGATE_DATA_DIR": str(data_dir),
            "IMAGEGATE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
            "IMAGEGATE_ALLOW_HTTP_WEBHOOKS": "true",
            "IMAGEGATE_RATE_LIMIT_PER_SECOND": "10000",
            "IMAGEGATE_RATE_LIMIT_BURST": "10000",
            "IMAGEGATE_EMBEDDED_WORKERS": str(workers),
            "IMAGEGATE_SHUTDOWN_GRACE_SECONDS": "10",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        env["IMAGEGATE_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "imagegate.cli", "serve", "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    return _wait_until_up(RunningServer(f"http://127.0.0.1:{port}", config, env, proc, log_path))


def default_env() -> dict[str, str]:
    """This process's environment without any ``IMAGEGATE_*`` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def start_default_server(workdir: Path, config: Path) -> RunningServer:
    """``imagegate serve --config CONFIG`` as a user starts it: no ``IMAGEGATE_*`` variable at all,
    no public URL, no test-only setting; data under ``workdir/.imagegate`` (the default, relative
    to the working directory). Only the port is a flag, so the test does not collide with a
    server already on 8000."""
    port = free_port()
    env = default_env()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "imagegate.cli", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    return _wait_until_up(RunningServer(f"http://127.0.0.1:{port}", config, env, proc, log_path, cwd=workdir))


def _wait_until_up(server: RunningServer) -> RunningServer:
    proc = server.proc
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")


def wait_status(client: httpx.Client, request_id: str, key: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v2/requests/status/{request_id}", headers={"Ocp-Apim-Subscription-Key": key})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("COMPLETED", "FAILED", "ERROR", "CANCELED"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{request_id} still {body['status']} after {timeout}s")
        time.sleep(0.05)


# -- the worker registry ---------------------------------------------------------------------------


def worker_row(worker_id: str, **changes: Any) -> Any:
    """The registry row a worker process writes when it starts, with ``changes``."""
    from imagegate import __version__
    from imagegate.jobs.workers import WorkerInfo, WorkerState

    now = time.time()
    row = WorkerInfo(
        id=worker_id, host=socket.gethostname(), pid=os.getpid(), device="cpu", gpu=None, version=__version__,
        models=None, loaded=[], state=WorkerState.IDLE, current_job=None, last_error=None,
        started_at=now, heartbeat_at=now,
    )
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def register_worker(store: Any, worker_id: str, *, heartbeat_age: float = 0.0, models: list[str] | None = None) -> None:
    """Register ``worker_id`` as a worker process would (tests that claim jobs through the store
    act as that worker); ``heartbeat_age`` backdates its heartbeat, as a worker that stopped would."""
    then = time.time() - heartbeat_age
    store.workers.register(worker_row(worker_id, models=models, started_at=then, heartbeat_at=then))
