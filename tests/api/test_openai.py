"""The OpenAI-compatible images API, driven by the official `openai` package against the real
server (and by plain HTTP where the package has no way to say it: edits given by URL)."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from harness import RunningServer, png_bytes, sample_photo

SUB = "Ocp-Apim-Subscription-Key"
FAST = {"steps": 2}


def client_for(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def message(error: openai.APIStatusError) -> str:
    return error.response.json()["error"]["message"]


def balance(server: RunningServer, key: str) -> str:
    with server.client() as client:
        return client.get("/v2/account", headers={SUB: key}).json()["balance"]


def test_generations_answer_urls_and_charge_the_native_price(server: RunningServer) -> None:
    key = server.create_key("1")
    raw = client_for(server, key).images.with_raw_response.generate(
        model="flux-dev", prompt="a lighthouse", n=2, size="64x64", extra_body={**FAST, "seed": 9}
    )
    result = raw.parse()
    assert len(result.data) == 2 and result.created > 0
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("flux-dev_")
    with server.client() as client:
        for item in result.data:
            assert item.url and item.b64_json is None
            image = Image.open(io.BytesIO(client.get(item.url).content))
            assert image.size == (64, 64) and image.format == "JPEG"
        [listed] = client.get("/v2/requests", headers={SUB: key}).json()["items"]
    assert listed["request_id"] == request_id and listed["cost"] == "0.050000"
    # Held and charged as /flux-dev/v1/dev/textToImage charges two images.
    assert balance(server, key) == "0.950000"


def test_generations_in_b64_json_with_imagegate_extras(server: RunningServer) -> None:
    key = server.create_key("1")
    images = client_for(server, key).images
    kwargs: dict[str, Any] = dict(model="flux-dev", prompt="a red cube", size="80x64", response_format="b64_json", output_format="png")
    first = images.generate(**kwargs, extra_body={**FAST, "seed": 4, "guidance": 5})
    again = images.generate(**kwargs, extra_body={**FAST, "seed": 4, "guidance": 5})
    other = images.generate(**kwargs, extra_body={**FAST, "seed": 5, "guidance": 5})
    data = base64.b64decode(first.data[0].b64_json)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (80, 64)
    assert first.data[0].b64_json == again.data[0].b64_json != other.data[0].b64_json


def test_edits_take_a_multipart_image_and_a_mask(server: RunningServer) -> None:
    key = server.create_key("1")
    images = client_for(server, key).images
    photo = ("photo.png", png_bytes(sample_photo()), "image/png")
    edited = images.edit(model="flux-dev-i2i", image=photo, prompt="in winter", n=2, extra_body=FAST)
    with server.client() as client:
        assert [Image.open(io.BytesIO(client.get(d.url).content)).size for d in edited.data] == [(96, 64)] * 2
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    filled = images.edit(
        model="flux-fill-dev", image=[photo], mask=("mask.png", png_bytes(mask), "image/png"), prompt="a door",
        response_format="b64_json", output_format="png", extra_body=FAST,
    )
    assert Image.open(io.BytesIO(base64.b64decode(filled.data[0].b64_json))).format == "PNG"
    assert balance(server, key) == "0.910000"  # 2 × $0.025 for the edit, $0.04 for the fill


def test_edits_take_image_urls_as_json(server: RunningServer, image_host: Any) -> None:
    key = server.create_key("1")
    urls = [f"{image_host.base_url}/photo.png", f"{image_host.base_url}/photo2.png"]
    body = {"model": "pixelforge-relighting-api", "prompt": "soft studio light", "size": "64x64", "steps": 2,
            "images": [{"image_url": url} for url in urls]}
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        r = client.post("/v1/images/edits", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert list(r.json()) == ["created", "data"]
        image = Image.open(io.BytesIO(client.get(r.json()["data"][0]["url"]).content))
        assert image.size == (64, 64)
        r = client.post("/v1/images/edits", json={**body, "images": None, "image": urls}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text


def test_errors_come_in_openai_shape_naming_the_openai_field(server: RunningServer) -> None:
    key = server.create_key("1")
    images = client_for(server, key).images
    with pytest.raises(openai.BadRequestError) as bad:
        images.generate(model="flux-dev", prompt="x", n=5)
    assert bad.value.response.json() == {
        "error": {"message": "n must be ≤ 4", "type": "invalid_request_error", "param": "n", "code": None}
    }
    with pytest.raises(openai.BadRequestError) as bad:
        images.generate(model="flux-dev", prompt="x", size="100x64")
    assert bad.value.param == "size" and message(bad.value) == "size (image_size.width) must be a multiple of 16"
    with pytest.raises(openai.BadRequestError) as bad:
        images.generate(model="flux-2-klein-4b", prompt="x", output_format="webp")
    assert bad.value.param == "output_format" and message(bad.value) == "output_format must be one of: png for model 'flux-2-klein-4b'"
    with pytest.raises(openai.BadRequestError) as bad:
        images.generate(model="flux-dev", prompt="x", extra_body={"negative_prompt": "blur"})
    assert bad.value.param == "negative_prompt" and message(bad.value) == "negative_prompt is not a parameter of model 'flux-dev'"
    with pytest.raises(openai.BadRequestError) as bad:
        images.generate(model="flux-dev-i2i", prompt="x")
    assert bad.value.param == "model" and message(bad.value) == "model 'flux-dev-i2i' edits images: use POST /v1/images/edits"
    with pytest.raises(openai.NotFoundError) as missing:
        images.generate(model="dall-e-3", prompt="x")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        client_for(server, "ig_wrong").images.generate(prompt="x")
    assert unauthorized.value.code == "invalid_api_key"
    with pytest.raises(openai.APIStatusError) as poor:
        client_for(server, server.create_key("0.01")).images.generate(model="flux-dev", prompt="x", n=1)
    assert poor.value.status_code == 402 and poor.value.code == "insufficient_quota"
    assert balance(server, key) == "1.000000"  # nothing was charged


def test_a_job_that_fails_on_its_input_answers_400_naming_the_field(server: RunningServer, image_host: Any) -> None:
    key = server.create_key("1")
    body = {"model": "flux-dev-i2i", "prompt": "x", "image": f"{image_host.base_url}/missing.png", "steps": 2}
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        r = client.post("/v1/images/edits", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "image" and error["code"] == "invalid_input" and "HTTP 404" in error["message"]
