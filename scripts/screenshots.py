"""Screenshots of the web console for the README, taken from the real UI.

Starts `imagegate serve` on tiny fixture weights with an admin token (through the test harness),
makes keys and a few requests, drives Debian's Chromium through the pages at 1280×800 and writes
palette PNGs to docs/:

    .venv/bin/python scripts/screenshots.py [--config tiny/imagegate.toml] [--out docs]

The pictures the tiny models draw are noise: that is what random weights give.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from harness import start_server, wait_status  # noqa: E402
from tests.console.support import ADMIN_TOKEN, ADMIN_TOKEN_FIELD, API_KEY_FIELD, CHROMIUM, CHROMIUM_ARGS, VIEWPORT, sign_in  # noqa: E402

KEY_HEADER = "Ocp-Apim-Subscription-Key"
SMALL = {"width": 128, "height": 128}


def save(png: bytes, path: Path) -> None:
    """A 256-colour PNG: a UI screenshot loses nothing visible and shrinks several times."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


def make_history(base_url: str) -> str:
    """Keys with some spend on them; answers the key the playground uses."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base_url, timeout=120) as http:
        created = {
            name: http.post("/admin/v1/keys", headers=admin, json={"name": name, "balance": balance}).json()
            for name, balance in (("alice", "10"), ("render-farm", "25"), ("ci-bot", "2"))
        }
        http.post(f"/admin/v1/keys/{created['ci-bot']['key']['id']}/topup", headers=admin, json={"amount": "3"})
        jobs = []
        for name, prompts in (("alice", ["a lighthouse", "a harbour at night"]), ("render-farm", ["a red door", "a blue door", "a green door"])):
            key = created[name]["api_key"]
            for prompt in prompts:
                body = {"prompt": prompt, "image_size": SMALL, "num_inference_steps": 4}
                jobs.append((key, http.post("/flux-dev/v1/dev/textToImage", headers={KEY_HEADER: key}, json=body).json()["request_id"]))
        # An input nobody can fetch: a FAILED request, charged as the seeds define it.
        key = created["alice"]["api_key"]
        bad = {"prompt": "a cat", "image_url": "http://127.0.0.1:9/missing.png", "num_inference_steps": 2}
        jobs.append((key, http.post("/flux-dev/v1/dev/imageToImage", headers={KEY_HEADER: key}, json=bad).json()["request_id"]))
        for key, request_id in jobs:
            wait_status(http, request_id, key)
    return created["alice"]["api_key"]


def busy_queue(base_url: str, key: str) -> None:
    """One long request running and a few waiting, for the live queue's picture."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for steps in (50, 40, 30, 20):
            body = {"prompt": "a slow lighthouse", "image_size": {"width": 384, "height": 384}, "num_inference_steps": steps}
            http.post("/flux-dev/v1/dev/textToImage", headers={KEY_HEADER: key}, json=body)


def settle(page: object) -> None:
    """Every request answered and every picture drawn."""
    page.wait_for_load_state("networkidle")  # type: ignore[attr-defined]
    page.wait_for_function("() => [...document.images].every((img) => img.complete)")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="an `imagegate fixtures build` config (built in a temporary directory if absent)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="imagegate-screens-") as scratch:
        config = args.config
        if config is None:
            subprocess.run([sys.executable, "-m", "imagegate.cli", "fixtures", "build", f"{scratch}/tiny"], check=True, capture_output=True)
            config = Path(scratch) / "tiny" / "imagegate.toml"
        server = start_server(Path(scratch) / "data", config=config, extra_env={"IMAGEGATE_ADMIN_TOKEN": ADMIN_TOKEN})
        try:
            key = make_history(server.base_url)
            args.out.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(120_000)

                page.goto(f"{server.base_url}/ui/playground/flux-dev")
                sign_in(page, API_KEY_FIELD, key)
                page.fill("textarea[name=prompt]", "a lighthouse on a cliff at dusk, long exposure")
                page.select_option("select[name=image_size]", "__custom__")
                page.fill("input[name='image_size.width']", str(SMALL["width"]))
                page.fill("input[name='image_size.height']", str(SMALL["height"]))
                page.fill("input[name=num_inference_steps]", "8")
                for _ in range(2):
                    page.click("button[name=run]")
                    page.locator(".run").first.locator(".images img").wait_for()
                page.click("button[role=tab]:text-is('Python')")
                shots = {"playground": None, "history": "/history", "account": "/account"}
                for name, path in shots.items():
                    if path:
                        page.click(f"nav a[href='/ui{path}']")
                        settle(page)
                    save(page.screenshot(), args.out / f"console-{name}.png")

                page.goto(f"{server.base_url}/ui/admin/keys")
                sign_in(page, ADMIN_TOKEN_FIELD, ADMIN_TOKEN)
                busy_queue(server.base_url, key)
                # The queue first, while the long requests still wait.
                for name in ("queue", "keys", "usage", "models", "workers"):
                    page.click(f"nav a[href='/ui/admin/{name}']")
                    if name == "queue":
                        page.locator(".progress-label", has_text="step").first.wait_for()
                    if name == "usage":
                        page.select_option("select[name=period]", "7")
                    settle(page)
                    time.sleep(0.5)
                    save(page.screenshot(), args.out / f"console-admin-{name}.png")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
