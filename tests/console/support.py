"""Steps the console tests share: signing in as a person would, reading what the page shows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("IMAGEGATE_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium dials Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "console-admin-token-0123456789"
VIEWPORT = {"width": 1280, "height": 800}
# Long enough for a tiny model on a busy CPU, short enough that a broken page fails fast.
UI_TIMEOUT_MS = 60_000
CONSOLE_BUILD = Path(__file__).resolve().parents[2] / "src" / "imagegate" / "api" / "ui_static" / "index.html"

KEY_STORAGE = "imagegate.apiKey"
ADMIN_STORAGE = "imagegate.adminToken"


API_KEY_FIELD = "api-key"
ADMIN_TOKEN_FIELD = "admin-token"


def sign_in(page: Any, field: str, secret: str) -> None:
    """Sign in through the form the page shows (``API_KEY_FIELD`` or ``ADMIN_TOKEN_FIELD``)."""
    page.fill(f"input[name={field}]", secret)
    page.click("form.card button[type=submit]")
    page.wait_for_selector(f"input[name={field}]", state="detached")


def refused_sign_in(page: Any, field: str, secret: str) -> str:
    """Submit a secret the server refuses; the error the form shows."""
    page.fill(f"input[name={field}]", secret)
    page.click("form.card button[type=submit]")
    return page.inner_text(".error")


def session_storage(page: Any) -> dict[str, str]:
    return page.evaluate("() => Object.fromEntries(Object.entries(sessionStorage))")
