"""A person in a real browser: sign in with an API key, run tiny models from the playground and
follow their progress, re-run with the same seed, upload an input and paint a mask, cancel, see
the wallet refuse, read the history and the account, and run the snippets the page shows."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from harness import RunningServer, png_bytes, sample_photo

from .support import API_KEY_FIELD, KEY_STORAGE, refused_sign_in, session_storage, sign_in

pytestmark = pytest.mark.browser

ENDED = ("COMPLETED", "FAILED", "ERROR", "CANCELED", "REFUSED")
TINY = {"width": "64", "height": "64"}


def open_playground(page: Any, server: RunningServer, key: str, model_id: str) -> None:
    page.goto(f"{server.base_url}/ui/playground/{model_id}")
    sign_in(page, API_KEY_FIELD, key)
    page.wait_for_selector("button[name=run]")


def tiny_request(page: Any, prompt: str, steps: int, seed: int | None = None) -> None:
    """Fill the flux-dev form for a 64×64 picture in a few steps."""
    page.fill("textarea[name=prompt]", prompt)
    page.select_option("select[name=image_size]", "__custom__")
    page.fill("input[name='image_size.width']", TINY["width"])
    page.fill("input[name='image_size.height']", TINY["height"])
    page.fill("input[name=num_inference_steps]", str(steps))
    if seed is not None:
        page.fill("input[name=seed]", str(seed))


def run_and_watch(page: Any, runs_before: int, timeout: float = 120) -> tuple[str, list[str]]:
    """Click Run; the newest run's status once it ends, and every progress label it showed."""
    page.click("button[name=run]")
    page.wait_for_function("n => document.querySelectorAll('.run').length > n", arg=runs_before)
    newest = page.locator(".run").first
    labels: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = newest.get_attribute("data-status")
        labels += [t for t in newest.locator(".progress-label").all_inner_texts() if t not in labels]
        if status in ENDED:
            return status, labels
        time.sleep(0.03)
    raise AssertionError(f"the run did not end within {timeout}s; it showed {labels}")


def pixels(url: str) -> np.ndarray:
    data = httpx.get(url, timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_an_api_key_is_checked_kept_in_session_storage_only_and_signed_out(page: Any, console_server: RunningServer) -> None:
    key = console_server.create_key("1", name="session")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{console_server.base_url}/ui/account")
    assert "401" in refused_sign_in(page, API_KEY_FIELD, "ig_not-a-key")

    sign_in(page, API_KEY_FIELD, key)
    page.wait_for_selector("[data-balance='1.000000']")
    assert session_storage(page)[KEY_STORAGE] == key
    assert page.evaluate("() => localStorage.length") == 0
    assert not [u for u in urls if key in u]

    page.click("button[name=sign-out-key]")
    page.wait_for_selector(f"input[name={API_KEY_FIELD}]")
    assert KEY_STORAGE not in session_storage(page)


def test_a_tiny_model_runs_with_live_progress_and_its_seed_gives_the_same_pixels_again(page: Any, console_server: RunningServer) -> None:
    key = console_server.create_key("1", name="playground")
    open_playground(page, console_server, key, "flux-dev")
    tiny_request(page, "a lighthouse at dusk", steps=8)

    status, labels = run_and_watch(page, 0)
    assert status == "COMPLETED", page.inner_text(".run")
    # The event stream's progress reached the page step by step.
    steps = [label for label in labels if label.startswith("step ")]
    assert steps and all(label.endswith("/ 8") for label in steps), labels
    first = page.locator(".run").first
    image = first.locator(".images img")
    page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=image.element_handle())
    seed = int(first.locator(".seed").inner_text().removeprefix("seed "))
    first_url = image.get_attribute("src")

    first.locator("button", has_text=f"Re-run with seed {seed}").click()
    page.wait_for_function("() => document.querySelectorAll('.run').length === 2")
    again = page.locator(".run").first
    again.locator("xpath=self::*[@data-status='COMPLETED']").wait_for()
    assert again.locator(".seed").inner_text() == f"seed {seed}"
    second_url = again.locator(".images img").get_attribute("src")
    assert second_url != first_url
    assert np.array_equal(pixels(first_url), pixels(second_url))

    # Both requests are in the history, with their thumbnails and costs; the wallet paid twice.
    page.click("nav >> text=History")
    rows = page.locator("tr[data-request-id]")
    rows.nth(1).wait_for()
    assert rows.count() == 2
    for i in range(2):
        assert rows.nth(i).locator("td.num").inner_text() == "$0.025"
        assert rows.nth(i).locator(".thumb img").get_attribute("src").startswith(console_server.base_url + "/media/")
    page.click("nav >> text=Account")
    page.wait_for_selector("[data-balance='0.950000']")
    assert page.locator("text=HOLD").count() == 2


def test_a_field_the_server_refuses_is_named_and_marked_in_the_form(page: Any, console_server: RunningServer) -> None:
    key = console_server.create_key("1", name="refused")
    open_playground(page, console_server, key, "flux-dev-i2i")
    page.fill("textarea[name=prompt]", "a lighthouse")
    page.fill("input[name=image_url]", "ftp://example.com/photo.png")
    status, _ = run_and_watch(page, 0)
    assert status == "REFUSED"
    message = page.inner_text(".run .error")
    assert message.startswith("400 · image_url: "), message
    page.wait_for_selector(".field-invalid[data-field=image_url]")


def test_an_empty_wallet_is_refused_with_a_402(page: Any, idle_server: RunningServer) -> None:
    key = idle_server.create_key("0", name="empty")
    open_playground(page, idle_server, key, "flux-dev")
    page.fill("textarea[name=prompt]", "a lighthouse")
    status, _ = run_and_watch(page, 0)
    assert status == "REFUSED"
    message = page.inner_text(".run .error")
    assert message.startswith("402 · ") and "Required: $0.025" in message, message


def test_queued_requests_are_canceled_from_the_gallery_and_from_the_history(page: Any, idle_server: RunningServer) -> None:
    key = idle_server.create_key("1", name="cancel")
    open_playground(page, idle_server, key, "flux-dev")
    page.fill("textarea[name=prompt]", "a lighthouse nobody will render")
    page.click("button[name=run]")
    run = page.locator(".run").first
    run.locator(".progress-label", has_text=" ahead").wait_for()
    run.locator("button", has_text="Cancel").click()
    run.locator("xpath=self::*[@data-status='CANCELED']").wait_for()

    with idle_server.client() as http:
        queued = http.post("/flux-dev/v1/dev/textToImage", headers={"Ocp-Apim-Subscription-Key": key}, json={"prompt": "another"})
        request_id = queued.json()["request_id"]
    page.click("nav >> text=History")
    row = page.locator(f"tr[data-request-id='{request_id}']")
    row.locator("button", has_text="Cancel").click()
    row.locator(".badge.status-canceled").wait_for()
    page.click("nav >> text=Account")
    # Nothing was charged: every hold came back.
    page.wait_for_selector("[data-balance='1.000000']")


def test_an_uploaded_picture_and_a_painted_mask_inpaint(page: Any, console_server: RunningServer, tmp_path: Path) -> None:
    key = console_server.create_key("1", name="inpaint")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(sample_photo(96, 64)))
    open_playground(page, console_server, key, "flux-fill-dev")
    page.fill("textarea[name=prompt]", "a red door")
    page.set_input_files("input[type=file][data-field=image]", str(photo))
    page.wait_for_function("() => document.querySelector('input[name=image]').value.includes('/v2/files/')")

    page.click("text=Paint the mask")
    canvas = page.locator(".mask-stage canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.click("text=Use this mask")
    page.wait_for_function("() => document.querySelector('input[name=mask]').value.includes('/v2/files/')")
    mask_url = page.input_value("input[name=mask]")

    # The mask went up as a black picture of the photo's size, white where the brush went.
    with console_server.client() as http:
        mask = Image.open(io.BytesIO(http.get(mask_url, headers={"Ocp-Apim-Subscription-Key": key}).content)).convert("L")
    assert mask.size == (96, 64)
    values = np.asarray(mask)
    assert values[32, 48] == 255 and values[2, 2] == 0

    page.select_option("select[name=megapixels]", "match_input")
    page.fill("input[name=num_inference_steps]", "2")
    status, _ = run_and_watch(page, 0)
    assert status == "COMPLETED", page.inner_text(".run")
    image = page.locator(".run .images img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert Image.open(io.BytesIO(httpx.get(image.get_attribute("src")).content)).size == (96, 64)


def test_a_synchronous_model_is_followed_and_reports_its_seed(page: Any, console_server: RunningServer) -> None:
    key = console_server.create_key("1", name="sync")
    open_playground(page, console_server, key, "flux-2-klein-4b")
    page.fill("textarea[name=prompt]", "a lighthouse")
    page.select_option("select[name=width]", "512")
    page.select_option("select[name=height]", "512")
    page.fill("input[name=steps]", "2")
    status, _ = run_and_watch(page, 0)
    assert status == "COMPLETED", page.inner_text(".run")
    run = page.locator(".run").first
    assert run.get_attribute("data-request-id").startswith("flux-2-klein-4b_")
    assert run.locator(".seed").inner_text().startswith("seed ")
    assert run.locator(".images img").count() == 1


def test_the_snippets_the_page_shows_run_as_shown(page: Any, console_server: RunningServer, tmp_path: Path) -> None:
    key = console_server.create_key("1", name="snippets")
    open_playground(page, console_server, key, "flux-dev")
    tiny_request(page, "it's a \"quoted\" lighthouse", steps=2, seed=7)
    env = {**os.environ, "IMAGEGATE_KEY": key}

    curl = page.inner_text("pre.code[data-language=curl]")
    assert key not in curl
    answer = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    submitted = httpx.Response(200, content=answer.stdout).json()
    assert submitted["status"] == "QUEUED" and submitted["request_id"].startswith("flux-dev_")

    page.click("button[role=tab]:text-is('JavaScript')")
    script = tmp_path / "run.mjs"
    script.write_text(page.inner_text("pre.code[data-language=javascript]"))
    done = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = httpx.Response(200, content=done.stdout).json()
    assert final["status"] == "COMPLETED" and final["output"]["seed"] == 7


    page.click("button[role=tab]:text-is('Python')")
    python = page.inner_text("pre.code[data-language=python]")
    assert 'client.run("flux-dev", {' in python and '"seed": 7' in python


def test_the_python_snippet_runs_with_imagegate_client(page: Any, console_server: RunningServer, tmp_path: Path) -> None:
    pytest.importorskip("imagegate_client", reason="imagegate-client (clients/python) is not installed")
    key = console_server.create_key("1", name="python-snippet")
    open_playground(page, console_server, key, "flux-dev")
    tiny_request(page, "a lighthouse", steps=2, seed=11)
    page.click("button[role=tab]:text-is('Python')")
    script = tmp_path / "run.py"
    script.write_text(page.inner_text("pre.code[data-language=python]"))
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "IMAGEGATE_KEY": key}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(" 11") and "/media/" in done.stdout
