"""The operator's pages in a real browser: sign-in with the admin token, keys and wallets, the
live queue with cancel, and every other admin page rendering what the admin API answers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from harness import RunningServer

from .support import ADMIN_STORAGE, ADMIN_TOKEN, ADMIN_TOKEN_FIELD, refused_sign_in, session_storage, sign_in

pytestmark = pytest.mark.browser

KEY_HEADER = "Ocp-Apim-Subscription-Key"


def test_a_wrong_admin_token_is_refused_and_the_right_one_is_kept_in_session_storage_only(page: Any, console_server: RunningServer) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{console_server.base_url}/ui/admin/keys")
    assert "401" in refused_sign_in(page, ADMIN_TOKEN_FIELD, "not-the-admin-token-at-all")
    assert ADMIN_STORAGE not in session_storage(page)

    sign_in(page, ADMIN_TOKEN_FIELD, ADMIN_TOKEN)
    page.wait_for_selector("text=Create key")
    assert session_storage(page)[ADMIN_STORAGE] == ADMIN_TOKEN
    assert page.evaluate("() => localStorage.length") == 0
    assert not [u for u in urls if ADMIN_TOKEN in u]
    assert ADMIN_TOKEN not in page.content()

    page.click("button[name=sign-out-admin]")
    page.wait_for_selector(f"input[name={ADMIN_TOKEN_FIELD}]")
    assert ADMIN_STORAGE not in session_storage(page)


def test_an_operator_creates_a_key_tops_it_up_and_the_key_works_with_that_balance(page: Any, console_server: RunningServer) -> None:
    name = f"alice-{uuid.uuid4().hex[:6]}"
    page.goto(f"{console_server.base_url}/ui/admin/keys")
    sign_in(page, ADMIN_TOKEN_FIELD, ADMIN_TOKEN)
    page.fill("input[name=key-name]", name)
    page.fill("input[name=key-balance]", "2")
    page.click("text=Create key")
    key = page.get_attribute(".created-key code", "data-api-key")
    assert key and key.startswith("ig_")

    row = page.locator("tr[data-key-id]", has_text=name)
    assert row.locator(".balance").inner_text() == "$2.00"
    row.locator("input[name=topup-amount]").fill("3.25")
    row.locator("button", has_text="Top up").click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('tr[data-key-id]')].some(r => r.innerText.includes(name) && r.querySelector('.balance').innerText === '$5.25')",
        arg=name,
    )

    with console_server.client() as http:
        account = http.get("/v2/account", headers={KEY_HEADER: key}).json()
    assert (account["name"], account["balance"]) == (name, "5.250000")

    row.locator("button", has_text="Ledger").click()
    ledger = page.locator(".nested")
    ledger.locator("text=$3.25").wait_for()
    assert ledger.locator(".kind-topup").count() == 2

    row.locator("button", has_text="Disable").click()
    row.locator("text=disabled").wait_for()
    with console_server.client() as http:
        assert http.get("/v2/account", headers={KEY_HEADER: key}).status_code == 403

    page.click("text=Audit log")
    page.fill("input[name=target]", account["key_id"])
    page.keyboard.press("Enter")
    for action in ("key.create", "key.topup", "key.disable"):
        page.locator("td", has_text=action).first.wait_for()


def test_the_live_queue_shows_a_queued_job_and_cancels_it_without_charging(page: Any, idle_server: RunningServer) -> None:
    key = idle_server.create_key("1")
    with idle_server.client() as http:
        submitted = http.post(
            "/flux-dev/v1/dev/textToImage",
            headers={KEY_HEADER: key},
            json={"prompt": "a queued lighthouse", "image_size": {"width": 64, "height": 64}},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["request_id"]
        assert http.get("/v2/account", headers={KEY_HEADER: key}).json()["balance"] == "0.975000"

    page.goto(f"{idle_server.base_url}/ui/admin/queue")
    sign_in(page, ADMIN_TOKEN_FIELD, ADMIN_TOKEN)
    row = page.locator(f"tr[data-job-id='{job_id}']")
    row.locator("text=QUEUED").wait_for()
    assert int(page.locator("tr[data-model-id=flux-dev] .queued-count").inner_text()) >= 1
    row.locator("button", has_text="Cancel").click()
    row.wait_for(state="detached")

    with idle_server.client() as http:
        status = http.get(f"/v2/requests/status/{job_id}", headers={KEY_HEADER: key}).json()
        balance = http.get("/v2/account", headers={KEY_HEADER: key}).json()["balance"]
    assert status["status"] == "CANCELED"
    assert balance == "1.000000"


def test_models_usage_workers_and_webhooks_render_the_admin_api(page: Any, console_server: RunningServer) -> None:
    page.goto(f"{console_server.base_url}/ui/admin/models")
    sign_in(page, ADMIN_TOKEN_FIELD, ADMIN_TOKEN)
    row = page.locator("tr[data-model-id=flux-pro]")
    row.locator("input[name=price]").fill("0.5")
    row.locator("button", has_text="Set").click()
    row.locator("text=$0.50").wait_for()
    row.locator("text=runtime").wait_for()
    row.locator("button", has_text="Clear").click()
    row.locator("text=$0.03").wait_for()
    row.locator("input[name=enabled]").uncheck()
    row.locator("text=off").wait_for()
    row.locator("input[name=enabled]").check()
    row.locator("text=on").wait_for()

    page.click("text=Workers")
    page.locator("tr[data-worker-id] .badge", has_text="idle").or_(page.locator("tr[data-worker-id] .badge", has_text="busy")).first.wait_for()

    for title in ("Usage", "Webhooks"):
        page.click(f"nav >> text={title}")
        page.wait_for_selector(f"h1:text-is('{title}')")
        page.wait_for_load_state("networkidle")
        assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
