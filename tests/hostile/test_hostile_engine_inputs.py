"""Inputs that only a real model can find fault with, through the real server and tiny real
pipelines: each ends FAILED naming the field (the request's fault, charged as the seeds say), never
ERROR (imagegate's own fault). One row per case; after the table the server still serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from harness import RunningServer
from PIL import Image

from .support import SUB, assert_still_serving, data_uri, encode, safetensors_of, wait_terminal

RELIGHT = "/pixelforge-relighting-api/v1/relighting/generate"
P_IMAGE = "/p-image/v1/p-image-edit/generate"
UPSCALE = "/p-image-upscale/v1/p-image-upscale/generate"
TRAINER_831 = "/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request"


def picture(width: int, height: int) -> str:
    return data_uri(encode(Image.new("RGB", (width, height), (120, 30, 200)), "PNG"))


def lora_file(*names: str, shape: tuple[int, int] = (4, 4)) -> str:
    return data_uri(safetensors_of({name: ("F32", list(shape)) for name in names}), "application/octet-stream")


def relight(lora: str) -> dict[str, Any]:
    return {"prompt": "warm light", "image_urls": [picture(64, 64)], "image_size": "square", "num_inference_steps": 2, "loras": [{"path": lora}]}


@dataclass(frozen=True)
class Row:
    id: str
    path: str
    body: dict[str, Any]
    error: str  # how the job's error starts: the field, then the rule


ROWS = [
    Row("lora-for-another-model", RELIGHT, relight(lora_file("unet.down.lora_A.weight", "unet.down.lora_B.weight")),
        "loras[0].path: holds no adapter weights for this model's transformer"),
    Row("lora-for-modules-the-model-lacks", RELIGHT, relight(lora_file("transformer.nowhere.lora_A.weight", "transformer.nowhere.lora_B.weight")),
        "loras[0]: cannot apply LoRA to this model"),
    Row("lora-of-the-wrong-shape", RELIGHT, relight(lora_file("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_q.lora_B.weight")),
        "loras[0]: cannot apply LoRA to this model"),
    Row("reference-of-one-pixel", P_IMAGE, {"prompt": "x", "images": [picture(1, 1)]}, "images[0]: is 1x1"),
    Row("upscale-of-a-hairline", UPSCALE, {"image": picture(4000, 1), "upscale_mode": "factor", "factor": 2}, "image: is 4000x1"),
    Row("training-picture-too-small", TRAINER_831, {"image_data_url": picture(20, 20), "steps": 1}, "image_data_url: is 20x20 at the training size"),
    Row("training-picture-too-narrow", TRAINER_831, {"image_data_url": picture(8000, 70), "steps": 1}, "image_data_url: is 5473x47 at the training size"),
]


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> tuple[str, str]:
    return server.create_key("100", name="engine-inputs"), server.create_key("100", name="probe")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_input_faults_found_by_the_model_end_failed_naming_the_field(server: RunningServer, keys: tuple[str, str], row: Row) -> None:
    key, probe = keys
    with server.client() as client:
        r = client.post(row.path, json=row.body, headers={SUB: key})
        assert r.status_code == 202, r.text
        done = wait_terminal(client, r.json()["request_id"], key, timeout=300)
        assert done["status"] == "FAILED", (row.id, done)
        assert done["error"].startswith(row.error), (row.id, done["error"])
        assert_still_serving(client, probe)
