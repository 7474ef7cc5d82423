"""How OpenAI image requests map onto each catalog model's own parameters."""

from __future__ import annotations

import pytest

from imagegate.catalog import MODELS
from imagegate.exceptions import ValidationError
from imagegate.protocol.openai import ImageEditRequest, ImageGenerationRequest, binding, native_body


def body(model_id: str, images: list[str] | None = None, mask: str | None = None, **fields: object) -> dict[str, object]:
    b = binding(MODELS[model_id])
    assert b is not None
    request = (ImageEditRequest if images else ImageGenerationRequest).model_validate({"prompt": "p", **fields})
    return native_body(b, request, images or [], mask)


def test_each_field_goes_to_the_models_own_parameter() -> None:
    assert body("flux-dev", n=2, size="512x256", steps=4, guidance=5, seed=1, output_format="png") == {
        "prompt": "p", "num_images": 2, "image_size": {"width": 512, "height": 256},
        "num_inference_steps": 4, "guidance_scale": 5.0, "seed": 1, "output_format": "png",
    }
    assert body("flux-1-schnell", size="256x512", steps=2) == {"prompt": "p", "width": 256, "height": 512, "num_steps": 2}
    assert body("flux-pro-1-1", size="1920x1080") == {"prompt": "p", "aspect_ratio": "16:9"}
    assert body("flux-fill-dev", images=["u"], mask="m", n=3, guidance=30, output_format="jpeg") == {
        "prompt": "p", "num_outputs": 3, "guidance": 30.0, "output_format": "jpg", "image": "u", "mask": "m",
    }
    assert body("flux-2-pro-image-to-image-866", images=["a", "b"], size="1024x768") == {
        "prompt": "p", "image_size": "1024x768", "image_urls": ["a", "b"],
    }
    assert body("boogu-image", size="auto", negative_prompt="blur") == {"prompt": "p", "negative_prompt": "blur"}


@pytest.mark.parametrize(
    ("model_id", "fields", "field", "rule"),
    [
        ("flux-2-klein-4b", {"n": 2}, "n", "must be 1 for model 'flux-2-klein-4b' (it makes one image per request)"),
        ("flux-dev", {"size": "big"}, "size", 'must be "auto" or "WIDTHxHEIGHT", e.g. "1024x1024"'),
        ("flux-pro-1-1", {"size": "1000x999"}, "size", "must be \"auto\" or have one of the aspect ratios 21:9, 16:9, 4:3, 3:2, 1:1, 2:3, 3:4, 9:16, 9:21 for model 'flux-pro-1-1' (got 1000:999)"),
        ("pixelforge-image", {"size": "512x512"}, "size", "must be \"auto\" for model 'pixelforge-image' (it sets its own size)"),
        ("flux-2-klein-4b", {"guidance": 3}, "guidance", "is not a parameter of model 'flux-2-klein-4b'"),
        ("flux-2-klein-4b", {"output_format": "jpeg"}, "output_format", "must be one of: png for model 'flux-2-klein-4b'"),
    ],
)
def test_a_field_the_model_cannot_take_is_refused_by_its_openai_name(model_id: str, fields: dict[str, object], field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        body(model_id, **fields)
    assert (refused.value.field, refused.value.rule) == (field, rule)


def test_the_models_own_errors_are_named_by_the_openai_field() -> None:
    spec = MODELS["flux-dev"]
    b = binding(spec)
    assert b is not None
    for fields, field, message in (
        ({"n": 9}, "n", "n must be ≤ 4"),
        ({"size": "100x64"}, "size", "size (image_size.width) must be a multiple of 16"),
        ({"steps": 0}, "steps", "steps must be ≥ 1"),
    ):
        with pytest.raises(ValidationError) as native:
            spec.validate(body("flux-dev", **fields))
        translated = b.translate(native.value)
        assert (translated.field, translated.message) == (field, message)
    assert b.field_of("prompt: too long") == "prompt"
    edit = binding(MODELS["pixelforge-relighting-api"])
    assert edit is not None and edit.field_of("image_urls[1]: could not fetch http://x: HTTP 404") == "image"


def test_models_without_a_prompt_have_no_openai_route() -> None:
    routes = {spec.id: (b.path if (b := binding(spec)) else None) for spec in MODELS.values()}
    assert routes["p-image-upscale"] is None and routes["flux-2-pro-text-to-image-trainer-712"] is None
    assert routes["flux-dev"] == "/v1/images/generations" and routes["flux-fill-dev"] == "/v1/images/edits"
