"""Shared fixtures: tiny model checkpoints, a loopback image host, and the real server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from PIL import Image

if TYPE_CHECKING:
    from imagegate.jobs.store import JobStore

from harness import (
    POSTGRES_ADMIN_URL,
    ImageHost,
    RunningServer,
    _postgres_available,
    free_port,
    png_bytes,
    sample_photo,
    start_server,
)

@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session; required in CI, skipped elsewhere if absent."""
    if not _postgres_available():
        if os.environ.get("IMAGEGATE_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required (IMAGEGATE_REQUIRE_POSTGRES) but {POSTGRES_ADMIN_URL} does not answer")
        pytest.skip("no PostgreSQL server reachable")
    import psycopg

    name = f"imagegate_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imagegate fixtures build`: every architecture, tiny and random; returns the config path."""
    root = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, "-m", "imagegate.cli", "fixtures", "build", str(root)], check=True, capture_output=True)
    return root / "imagegate.toml"


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    port = free_port()
    host = ImageHost(base_url=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            item = host.files.get(self.path.lstrip("/"))
            if item is None:
                self.send_response(404)
                self.end_headers()
                return
            data, content_type = item
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host.add("photo.png", png_bytes(sample_photo()))
    host.add("photo.jpg", png_bytes(sample_photo(seed=1), "JPEG"), "image/jpeg")
    host.add("photo2.png", png_bytes(sample_photo(seed=2)))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    host.add("mask.png", png_bytes(mask))
    yield host
    server.shutdown()


@pytest.fixture(scope="session")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One SQLite-backed server with tiny weights for the whole session."""
    srv = start_server(tmp_path_factory.mktemp("server"), config=tiny_models)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pg_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("pg-server"), config=tiny_models, database_url=postgres_url)
    yield srv
    srv.stop()


@pytest.fixture()
def api_key(server: RunningServer) -> str:
    return server.create_key("100")


@pytest.fixture(scope="session")
def flux1_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny FLUX.1 checkpoints, built once for the engine and fixture tests."""
    from imagegate.fixtures.flux1 import build_flux1, build_flux1_fill, build_flux1_kontext

    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "t2i": build_flux1(root),
        "schnell": build_flux1(root, guidance_embeds=False),
        "fill": build_flux1_fill(root),
        "kontext": build_flux1_kontext(root),
    }


# -- job stores -------------------------------------------------------------------------------------


def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> "JobStore":
    """A migrated store: a SQLite file, or the session's PostgreSQL database emptied first."""
    from imagegate.jobs.store import JobStore

    if kind == "sqlite":
        store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    else:
        store = JobStore(request.getfixturevalue("postgres_url"))
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    store.migrate()
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator["JobStore"]:
    """The same tests against the embedded SQLite default and a real PostgreSQL server."""
    s = open_store(request.param, tmp_path, request)
    yield s
    s.dispose()


@pytest.fixture()
def sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator["JobStore"]:
    s = open_store("sqlite", tmp_path, request)
    yield s
    s.dispose()
