"""Boogu Image and Boogu Image Edit, served by Qwen-Image and Qwen-Image-Edit (rows 1–3).

Qwen-Image is the open model with the same strengths the seed lists: bilingual prompts and
text rendering, true classifier-free guidance with a negative prompt. Its instruction-editing
sibling (Qwen-Image-Edit-2509) serves the edit rows, with image guidance for
``image_guidance_scale``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from imagegate.catalog.base import (
    Auth,
    InputKind,
    ModelSpec,
    OutputOptions,
    Protocol,
    RequestSchema,
    Route,
)
from imagegate.catalog.fields import (
    Bool,
    ImageUrl,
    OptionalText,
    Prompt,
    Seed,
    image_size_field,
    ranged_float,
    ranged_int,
    resolve_image_size,
)
from imagegate.engines.base import MEGAPIXEL, NATIVE_AREA, EngineCall, QwenImageOptions
from imagegate.engines.keys import EngineKey

WEIGHTS = "Qwen/Qwen-Image"
EDIT_WEIGHTS = "Qwen/Qwen-Image-Edit-2509"

# Row 3 prices in credits: 1 credit for a 1K image (up to 1024x1024), 2K sizes per megapixel
# (rounded up).
def credits_for(width: int, height: int) -> int:
    pixels = width * height
    if pixels <= NATIVE_AREA:
        return 1
    return -(-pixels // MEGAPIXEL)


class BooguImageRequest(RequestSchema):
    prompt: Prompt
    negative_prompt: OptionalText = ""
    image_size: image_size_field(max_side=2048) = "square_hd"
    num_inference_steps: ranged_int(20, 50) = 30
    guidance_scale: ranged_float(1, 8) = 4
    cfg_range_start: ranged_float(0, 1) = 0
    cfg_range_end: ranged_float(0, 1) = 1
    num_images: ranged_int(1, 4) = 1
    output_format: Literal["jpeg", "png"] = "jpeg"
    enable_safety_checker: Bool = True
    seed: Seed | None = None
    sync_mode: Bool = False

    @model_validator(mode="after")
    def _range_ordered(self) -> "BooguImageRequest":
        if self.cfg_range_start > self.cfg_range_end:
            raise ValueError("cfg_range_start must be ≤ cfg_range_end")
        return self


class BooguImageEditRequest(BooguImageRequest):
    image_url: ImageUrl
    image_guidance_scale: ranged_float(1, 8) = 1


class BooguImageEditDojoRequest(RequestSchema):
    """Row 3's body: `image` instead of `image_url`, fewer knobs."""

    prompt: Prompt
    image: ImageUrl
    image_size: image_size_field(max_side=2048) = "square_hd"
    negative_prompt: OptionalText = ""
    guidance_scale: ranged_float(1, 8) = 4
    image_guidance_scale: ranged_float(1, 8) = 1
    seed: Seed | None = None


def _common(p: dict[str, Any]) -> dict[str, Any]:
    width, height = resolve_image_size(p["image_size"])
    return dict(
        prompt=p["prompt"],
        negative_prompt=p.get("negative_prompt") or None,
        width=width,
        height=height,
        num_images=p.get("num_images", 1),
        num_inference_steps=p.get("num_inference_steps", 30),
        guidance_scale=p["guidance_scale"],
        seed=p["seed"],
        options=QwenImageOptions(
            cfg_range_start=p.get("cfg_range_start", 0.0),
            cfg_range_end=p.get("cfg_range_end", 1.0),
            image_guidance_scale=p.get("image_guidance_scale", 1.0),
        ),
    )


def image_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(task="text-to-image", **_common(p))


def edit_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(task="edit", images=[inputs["image_url"]], **_common(p))


def output(p: dict[str, Any]) -> OutputOptions:
    return OutputOptions(format=p.get("output_format", "jpeg"), safety_checker=p.get("enable_safety_checker", True))


def edit_price(p: dict[str, Any]) -> int:
    from imagegate.billing.pricing import credit_micros

    width, height = resolve_image_size(p["image_size"])
    return credits_for(width, height) * credit_micros() * int(p.get("num_images", 1))


MODELS = [
    ModelSpec(
        id="boogu-image",
        title="Boogu Image (served by Qwen-Image)",
        family="qwen-image",
        task="text-to-image",
        engine_key=EngineKey.QWEN_IMAGE_TEXT_TO_IMAGE,
        default_weights=WEIGHTS,
        schema=BooguImageRequest,
        routes=[Route("/boogu-image/v1/boogu-image-request", Protocol.QUEUE)],
        price=None,
        build_call=image_call,
        output=output,
    ),
    ModelSpec(
        id="boogu-image-edit",
        title="Boogu Image Edit (instruction editing)",
        family="qwen-image",
        task="edit",
        engine_key=EngineKey.QWEN_IMAGE_EDIT,
        default_weights=EDIT_WEIGHTS,
        schema=BooguImageEditRequest,
        routes=[
            Route("/boogu-image-edit/v1/boogu-image-edit-request", Protocol.QUEUE),
            Route(
                "/api/v1/models/boogu-image-edit/run",
                Protocol.DOJO,
                Auth.BEARER,
                schema=BooguImageEditDojoRequest,
                rename=(("image", "image_url"),),
            ),
        ],
        price=edit_price,
        price_note="1 credit ($0.01) per image up to 1024×1024; larger sizes 1 credit per started megapixel",
        build_call=edit_call,
        output=output,
        inputs={"image_url": InputKind.IMAGE},
    ),
]
