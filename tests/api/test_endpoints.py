"""Every row of the endpoint inventory, called over loopback HTTP with the seed documents'
example bodies (image URLs pointed at the local image host), against tiny real pipelines."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from PIL import Image

from harness import wait_status

SUB = "Ocp-Apim-Subscription-Key"
SECRET = "X-Secret-Key"


def fetch_image(client: Any, url: str) -> tuple[Image.Image, str]:
    path = url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)), r.headers["content-type"]


def queue_cases(img: Any) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(model id, path, seed example body, expectations)."""
    return [
        (
            "boogu-image",
            "/boogu-image/v1/boogu-image-request",
            {
                "prompt": "A serene Japanese tea garden at dusk with stone lanterns lighting a winding path",
                "negative_prompt": "",
                "image_size": "square",
                "num_inference_steps": 20,
                "guidance_scale": 4,
                "cfg_range_start": 0,
                "cfg_range_end": 1,
                "num_images": 1,
                "output_format": "jpeg",
                "enable_safety_checker": True,
                "sync_mode": False,
            },
            {"size": (512, 512), "type": "image/jpeg"},
        ),
        (
            "boogu-image-edit",
            "/boogu-image-edit/v1/boogu-image-edit-request",
            {
                "prompt": "Change the background to a snowy mountain landscape at golden hour",
                "image_url": img("photo.jpg"),
                "negative_prompt": "",
                "image_size": "square",
                "num_images": 1,
                "num_inference_steps": 20,
                "guidance_scale": 4,
                "image_guidance_scale": 1,
                "cfg_range_start": 0,
                "cfg_range_end": 1,
                "output_format": "jpeg",
                "enable_safety_checker": True,
                "sync_mode": False,
            },
            {"size": (512, 512), "type": "image/jpeg"},
        ),
        (
            "p-image-upscale",
            "/p-image-upscale/v1/p-image-upscale/generate",
            {"image": img("photo.png"), "upscale_mode": "factor", "factor": 2, "enhance_details": True, "enhance_realism": True, "output_format": "jpg", "output_quality": 90},
            {"size": (192, 128), "type": "image/jpeg"},
        ),
        (
            "p-image",
            "/p-image/v1/p-image-edit/generate",
            {"prompt": "The woman dress is changed to black", "images": [img("photo.png")], "turbo": True, "seed": 42, "aspect_ratio": "1:1", "disable_safety_checker": False},
            {"size": (1024, 1024), "type": "image/jpeg"},
        ),
        (
            "flux-2-pro-image-to-image-866",
            "/flux-2-pro-image-to-image-866/v1/flux-2-pro-image-to-image-request",
            {
                "prompt": "Place realistic flames emerging from the top of the coffee cup, dancing above the rim",
                "image_size": "auto",
                "safety_tolerance": "2",
                "enable_safety_checker": True,
                "output_format": "jpeg",
                "image_urls": [img("photo.jpg")],
            },
            {"size": (96, 64), "type": "image/jpeg"},
        ),
        (
            "flux-2-pro-image-to-image-trainer-831",
            "/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request",
            {"image_data_url": img("photo.png"), "steps": 3, "learning_rate": 0.00007},
            {"type": "application/octet-stream"},
        ),
        (
            "flux-2-pro-text-to-image-799",
            "/flux-2-pro-text-to-image-799/v1/flux-2-pro-text-to-image-request",
            {
                "prompt": "An intense close-up of knight's visor reflecting battle, sword raised, flames in background",
                "image_size": "landscape_4_3",
                "safety_tolerance": 2,
                "output_format": "jpeg",
            },
            {"size": (1184, 880), "type": "image/jpeg"},
        ),
        (
            "flux-kontext-restore-image",
            "/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate",
            {"input_image": img("photo.png"), "seed": 42, "output_format": "png"},
            {"size": (96, 64), "type": "image/png"},
        ),
        (
            "flux-pro-1-1",
            "/pro1.1/v1/pro1.1ultra/generateRequest",
            {"prompt": "A futuristic cityscape at sunset", "seed": 43, "aspect_ratio": "16:9"},
            {"type": "image/jpeg"},
        ),
        (
            "flux-pro",
            "/flux-pro/v1/pro/textToImage",
            {"prompt": "A futuristic cityscape at sunset with flying cars", "image_size": "landscape_4_3", "num_inference_steps": 4},
            {"size": (1024, 768), "type": "image/jpeg"},
        ),
        (
            "flux-dev",
            "/flux-dev/v1/dev/imageToImage",
            {"image_url": img("photo.png"), "prompt": "Editorial rooftop shot, woman in peach tee and denim", "num_inference_steps": 4},
            {"size": (96, 64), "type": "image/jpeg"},
        ),
        (
            "flux-dev",
            "/flux-dev/v1/dev/textToImage",
            {"prompt": "A futuristic city skyline at sunset with flying cars", "image_size": "square", "num_inference_steps": 4},
            {"size": (512, 512), "type": "image/jpeg"},
        ),
        (
            "flux-fill-dev",
            "/flux-fill-dev/v1/flux-fill/generate",
            {
                "prompt": "a futuristic spaceship with neon lights",
                "image": img("photo.png"),
                "mask": img("mask.png"),
                "guidance": 35,
                "num_outputs": 2,
                "num_inference_steps": 4,
                "megapixels": "0.25",
                "output_format": "webp",
                "output_quality": 95,
            },
            {"count": 2, "type": "image/webp"},
        ),
        (
            "pixelforge-relighting-api",
            "/pixelforge-relighting-api/v1/relighting/generate",
            {"prompt": "Professional studio lighting with soft shadows", "image_urls": [img("photo.png")], "image_size": "square", "num_inference_steps": 4},
            {"size": (512, 512), "type": "image/png"},
        ),
    ]


@pytest.mark.parametrize("index", range(14))
def test_queue_endpoints_complete_with_real_media(server: Any, image_host: Any, api_key: str, index: int) -> None:
    model_id, path, body, expect = queue_cases(lambda n: f"{image_host.base_url}/{n}")[index]
    with server.client() as client:
        r = client.post(path, json=body, headers={SUB: api_key, "Cache-Control": "no-cache"})
        assert r.status_code == 202, r.text
        queued = r.json()
        assert set(queued) == {"request_id", "status", "polling_url"}
        assert queued["status"] == "QUEUED"
        assert queued["request_id"].startswith(model_id + "_")
        uuid_part = queued["request_id"][len(model_id) + 1 :]
        assert uuid_part[14] == "7"  # a version-7, time-ordered UUID
        assert queued["polling_url"] == f"{server.base_url}/v2/requests/status/{queued['request_id']}"
        done = wait_status(client, queued["request_id"], api_key)
        assert done["status"] == "COMPLETED", done
        assert done["model_id"] == model_id and done["error"] is None
        assert done["created_at"].endswith("Z") and done["completed_at"] >= done["created_at"]
        urls = done["output"]["media_url"]
        assert len(urls) == expect.get("count", 1)
        assert done["output"]["media_type"] == expect["type"]
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200
            assert r.headers["content-type"] == expect["type"]
            if expect["type"].startswith("image/"):
                image = Image.open(io.BytesIO(r.content))
                assert image.format.lower() in expect["type"]
                if "size" in expect:
                    assert image.size == expect["size"]
            else:
                # A trained LoRA in the safetensors format: 8-byte header length, then JSON.
                assert r.content[8:9] == b"{"


def test_sync_mode_answers_inline_data_uris(server: Any, api_key: str) -> None:
    body = {"prompt": "a red bicycle", "image_size": "square", "num_inference_steps": 20, "sync_mode": True, "output_format": "png", "seed": 7}
    with server.client() as client:
        r = client.post("/boogu-image/v1/boogu-image-request", json=body, headers={SUB: api_key})
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["status"] == "COMPLETED"
        uri = done["output"]["media_url"][0]
        assert uri.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.size == (512, 512)


def test_flux_2_klein_sync_output(server: Any, api_key: str) -> None:
    body = {"prompt": "A sunset with a dog playing on the beach", "steps": 2, "width": 512, "height": 512}
    with server.client() as client:
        r = client.post("/flux-2-klein-4b/v1/generateImage", json=body, headers={SUB: api_key})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"output"}
        image, ctype = fetch_image(client, r.json()["output"])
        assert image.size == (512, 512) and ctype == "image/png"


def test_flux_2_klein_1448_is_exact(server: Any, api_key: str) -> None:
    body = {"prompt": "a lighthouse", "steps": 1, "width": 1448, "height": 512}
    with server.client() as client:
        r = client.post("/flux-2-klein-4b/v1/generateImage", json=body, headers={SUB: api_key})
        assert r.status_code == 200, r.text
        image, _ = fetch_image(client, r.json()["output"])
        assert image.size == (1448, 512)


def test_generate_t2i_uses_secret_key(server: Any, api_key: str) -> None:
    with server.client() as client:
        r = client.post("/generateT2I", json={"prompt": "a sunset at the alps", "steps": 2, "width": 256, "height": 256}, headers={SECRET: api_key})
        assert r.status_code == 200, r.text
        image, _ = fetch_image(client, r.json()["output"])
        assert image.size == (256, 256)
        # The subscription header is not this route's header.
        r = client.post("/generateT2I", json={"prompt": "a sunset"}, headers={SUB: api_key})
        assert r.status_code == 401


def test_schnell_get_data_sync_output(server: Any, api_key: str) -> None:
    body = {"prompt": "Picture a sleek, futuristic car racing through a neon-lit cityscape", "num_steps": 4, "seed": 15, "height": 512, "width": 512}
    with server.client() as client:
        r = client.post("/flux-1-schnell/v1/getData", json=body, headers={SUB: api_key})
        assert r.status_code == 200, r.text
        image, ctype = fetch_image(client, r.json()["output"])
        assert image.size == (512, 512) and ctype == "image/png"


def test_schnell_batch_waits_without_webhook_and_check_status(server: Any, api_key: str) -> None:
    body = {"prompt": "Picture a handsome man dancing", "num_steps": 2, "seed": 1, "width": 256, "height": 256}
    with server.client() as client:
        r = client.post("/flux-1-schnell/v1/getDataBatch", json=body, headers={SECRET: api_key})
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["status"] == "completed" and done["output"].startswith(server.base_url)
        assert isinstance(done["completedAt"], int) and done["completedAt"] > 1_700_000_000_000


def test_schnell_batch_with_webhook_then_check_status(server: Any, api_key: str) -> None:
    body = {"prompt": "a cat", "num_steps": 2, "width": 256, "height": 256, "webhook_url": "http://127.0.0.1:9/hook"}
    with server.client() as client:
        r = client.post("/flux-1-schnell/v1/getDataBatch", json=body, headers={SECRET: api_key})
        assert r.status_code == 202, r.text
        queued = r.json()
        assert queued["status"] == "queued" and queued["pollingEndpoint"] == "/checkStatus"
        assert set(queued) == {"requestId", "status", "message", "pollingEndpoint", "pollingInstructions"}
        assert queued["requestId"] in queued["pollingInstructions"]
        deadline = time.monotonic() + 120
        while True:
            r = client.post("/flux-1-schnell/v1/checkStatus", json={"requestId": queued["requestId"]}, headers={SECRET: api_key})
            assert r.status_code == 200, r.text
            if r.json()["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.json()["status"] == "completed"
        assert r.json()["output"].startswith(server.base_url)


def test_pixelforge_image_sync_url(server: Any, image_host: Any, api_key: str) -> None:
    body = {"prompt": "A futuristic city skyline at sunset", "image_urls": [f"{image_host.base_url}/photo.png", f"{image_host.base_url}/photo2.png"]}
    with server.client() as client:
        r = client.post("/pixelforge-image/v1/qwen_image_gen/serve_image", json=body, headers={SUB: api_key})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"url"}
        image, _ = fetch_image(client, r.json()["url"])
        assert image.width * image.height > 900_000


def test_dojo_protocol(server: Any, image_host: Any, api_key: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    with server.client() as client:
        r = client.get("/api/v1/models", headers=auth)
        assert r.status_code == 200
        assert "boogu-image-edit" in {m["id"] for m in r.json()["models"]}
        before = client.get("/v2/account", headers=auth).json()["balance"]
        body = {"prompt": "Make it winter", "image": f"{image_host.base_url}/photo.png", "image_size": "square", "seed": 3}
        r = client.post("/api/v1/models/boogu-image-edit/run", json=body, headers=auth)
        assert r.status_code == 200, r.text
        job = r.json()
        assert set(job) == {"jobId", "status", "statusUrl", "creditCost", "creditsRemaining"}
        assert job["status"] == "pending" and job["creditCost"] == 1
        assert job["creditsRemaining"] == pytest.approx(float(before) * 100 - 1)
        deadline = time.monotonic() + 180
        while True:
            r = client.get(f"/api/v1/jobs/{job['jobId']}", headers=auth)
            assert r.status_code == 200
            status = r.json()
            if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["status"] == "completed", status
        assert status["creditCost"] == 1 and status["error"] is None
        image, _ = fetch_image(client, status["output"]["images"][0])
        assert image.size == (512, 512)
        r = client.post("/api/v1/models/no-such-model/run", json=body, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = client.post("/api/v1/models/boogu-image-edit/run", json={"image": "x"}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = client.get("/api/v1/models", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_openapi_describes_every_endpoint(server: Any) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
        paths = spec["paths"]
        from imagegate.catalog import MODELS

        for model in MODELS.values():
            for route in model.routes:
                assert route.path in paths
        body_ref = paths["/boogu-image/v1/boogu-image-request"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
        assert schema["properties"]["num_inference_steps"]["maximum"] == 50
        assert "prompt" in schema["required"]
        assert client.get("/docs").status_code == 200
