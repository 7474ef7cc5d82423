"""The client is a distribution of its own, ``imagegate-client``, that needs httpx and nothing else."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"


def test_the_client_builds_as_imagegate_client_requiring_httpx_only(tmp_path: Path) -> None:
    source = shutil.copytree(CLIENT, tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("imagegate_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = email.message_from_bytes(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert meta["Name"] == "imagegate-client"
    assert [re.match(r"[A-Za-z0-9_.-]+", r).group() for r in meta.get_all("Requires-Dist")] == ["httpx"]
    assert "imagegate_client/py.typed" in names
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"imagegate_client"}  # no server code


def _loaded_top_level(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(CLIENT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return set(out.split())


def test_importing_the_client_loads_nothing_beyond_httpx_and_the_standard_library() -> None:
    with_httpx = _loaded_top_level("import httpx")
    extra = _loaded_top_level("import imagegate_client") - with_httpx - set(sys.stdlib_module_names) - {"imagegate_client"}
    assert not extra, f"imagegate_client imports {sorted(extra)}, beyond httpx and the standard library"
