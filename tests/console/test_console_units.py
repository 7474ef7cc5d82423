"""The console's own unit suite (Vitest): the form generator, the snippets, the event-stream
parser — run on every request schema of the real catalog, whose server-side validators then
judge the bodies the form builds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagegate.catalog import MODELS
from imagegate.config import Settings
from imagegate.exceptions import ValidationError
from imagegate.protocol import views

UI_DIR = Path(__file__).resolve().parents[2] / "ui"


def catalog() -> list[dict[str, object]]:
    """Every model's entry exactly as GET /v2/models answers it."""
    settings = Settings()
    return [views.catalog_entry_view(spec, settings).model_dump(mode="json") for spec in MODELS.values()]


def test_the_unit_suite_passes_and_the_forms_it_builds_are_valid_requests(tmp_path: Path) -> None:
    if not (UI_DIR / "node_modules" / ".bin" / "vitest").exists():
        pytest.fail("ui/node_modules is missing: run `make setup` (it runs `npm ci` in ui/)")
    exported = tmp_path / "catalog.json"
    exported.write_text(json.dumps(catalog()))
    done = subprocess.run(
        ["npm", "test", "--silent"],
        cwd=UI_DIR,
        env={**os.environ, "IMAGEGATE_CATALOG_JSON": str(exported), "NO_COLOR": "1", "CI": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" not in done.stdout, done.stdout

    bodies = json.loads(Path(f"{exported}.bodies.json").read_text())
    assert set(bodies) == set(MODELS)
    refused = {}
    for model_id, body in bodies.items():
        try:
            MODELS[model_id].validate(body)
        except ValidationError as exc:
            refused[model_id] = (exc.message, body)
    assert not refused
