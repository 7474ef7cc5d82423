"""The web console in a real browser: Debian's Chromium driven by Playwright, against the real
server (tiny models, an admin token). Never a browser Playwright downloads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from harness import RunningServer, start_server

from .support import ADMIN_TOKEN, CHROMIUM, CHROMIUM_ARGS, CONSOLE_BUILD, UI_TIMEOUT_MS, VIEWPORT


def require_console_build() -> None:
    if not CONSOLE_BUILD.is_file():
        pytest.fail(f"the web console is not built ({CONSOLE_BUILD} is missing): run `make setup`")


@pytest.fixture(scope="session")
def console_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with tiny weights, one worker and the admin API on."""
    require_console_build()
    srv = start_server(
        tmp_path_factory.mktemp("console"), config=tiny_models, extra_env={"IMAGEGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def idle_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with no worker at all: whatever is submitted stays queued until canceled."""
    require_console_build()
    srv = start_server(
        tmp_path_factory.mktemp("console-idle"),
        config=tiny_models,
        workers=0,
        extra_env={"IMAGEGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator["object"]:
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: "object") -> Iterator["object"]:
    """A fresh browser context (empty session storage) with a 1280×800 window; page errors fail
    the test."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[attr-defined]
    context.set_default_timeout(UI_TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"the page raised: {errors}"
