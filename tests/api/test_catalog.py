"""GET /v2/models through the real server: every enabled model with its routes, price rule and
request schema, for any of the three auth headers."""

from __future__ import annotations

import time

import pytest

from harness import RunningServer
from imagegate.catalog import MODELS

SUB = "Ocp-Apim-Subscription-Key"


@pytest.mark.parametrize("header", ["Ocp-Apim-Subscription-Key", "X-Secret-Key", "Authorization"])
def test_catalog_lists_every_model_for_any_auth_header(server: RunningServer, api_key: str, header: str) -> None:
    value = f"Bearer {api_key}" if header == "Authorization" else api_key
    with server.client() as client:
        r = client.get("/v2/models", headers={header: value})
    assert r.status_code == 200, r.text
    entries = {entry["id"]: entry for entry in r.json()["models"]}
    assert set(entries) == set(MODELS)
    for spec in MODELS.values():
        entry = entries[spec.id]
        assert entry["title"] == spec.title and entry["task"] == spec.task
        native = [{"method": r.method, "path": r.path, "protocol": r.protocol.value, "auth_header": r.auth.value} for r in spec.routes]
        assert entry["routes"][: len(native)] == native


def test_catalog_entry_carries_schema_price_and_openai_route(server: RunningServer, api_key: str) -> None:
    with server.client() as client:
        entries = {e["id"]: e for e in client.get("/v2/models", headers={SUB: api_key}).json()["models"]}
    dev = entries["flux-dev"]
    schema = dev["request_schema"]
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["num_inference_steps"] == {"default": 28, "maximum": 50, "minimum": 1, "title": "Num Inference Steps", "type": "integer"}
    assert schema["properties"]["output_format"]["enum"] == ["jpeg", "png"]
    assert dev["price"] == {
        "description": "$0.025 per image",
        "usd_for_defaults": "0.025000",
        "per_image": True,
        "varies": False,
        "source": "catalog",
    }
    assert dev["routes"][-1] == {"method": "POST", "path": "/v1/images/generations", "protocol": "openai", "auth_header": "Authorization"}
    i2i = entries["flux-dev-i2i"]
    assert i2i["model_id"] == "flux-dev" and i2i["inputs"] == {"image_url": "image"}
    assert i2i["routes"][-1]["path"] == "/v1/images/edits"
    klein = entries["flux-2-klein-4b"]["price"]
    assert klein["varies"] and klein["usd_for_defaults"] == "0.000700" and "2048" in klein["description"]
    # Models OpenAI's images API cannot express (no prompt) list only their own routes.
    assert [r["protocol"] for r in entries["p-image-upscale"]["routes"]] == ["queue"]
    assert entries["flux-2-pro-text-to-image-trainer-712"]["inputs"] == {"image_data_url": "dataset"}


def test_catalog_leaves_out_disabled_models_and_needs_a_key(server: RunningServer, api_key: str) -> None:
    server.cli("models", "disable", "flux-pro")
    try:
        time.sleep(1.1)  # model switches are cached for a second
        with server.client() as client:
            ids = {e["id"] for e in client.get("/v2/models", headers={SUB: api_key}).json()["models"]}
            assert "flux-pro" not in ids and "flux-dev" in ids
            r = client.get("/v2/models")
            assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    finally:
        server.cli("models", "enable", "flux-pro")
        time.sleep(1.1)
