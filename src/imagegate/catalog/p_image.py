"""P-Image: upscaling with Real-ESRGAN, multi-image editing with FLUX.2 [klein] (rows 4, 5)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from imagegate.catalog.base import (
    InputKind,
    ModelSpec,
    OutputOptions,
    Protocol,
    RequestSchema,
    Route,
    fit_pixels,
    size_for_aspect,
    usd,
)
from imagegate.catalog.fields import Bool, ImageUrl, Prompt, Seed, WebhookFields, ranged_float, ranged_int
from imagegate.engines.base import MEGAPIXEL, NATIVE_AREA, EngineCall, Flux2Options, UpscaleOptions
from imagegate.engines.keys import EngineKey



class UpscaleRequest(RequestSchema):
    image: ImageUrl
    upscale_mode: Literal["target", "factor"] = "target"
    target: ranged_int(1, 8) = 4
    factor: ranged_float(1, 8) = 2
    enhance_details: Bool = False
    enhance_realism: Bool = True
    output_format: Literal["jpg", "webp", "png"] = "jpg"
    output_quality: ranged_int(0, 100) = 80
    disable_safety_checker: Bool = False


def upscale_price_for_pixels(pixels: int) -> int:
    return usd("0.005") if pixels <= 4 * MEGAPIXEL else usd("0.01")


def upscale_price(p: dict[str, Any]) -> int:
    # Target mode knows its output size now; factor mode depends on the input's size, so the
    # most it can cost is held and the exact price is settled when the job completes.
    if p["upscale_mode"] == "target":
        return upscale_price_for_pixels(p["target"] * MEGAPIXEL)
    return usd("0.01")


def upscale_final_price(p: dict[str, Any], result: Any) -> int:
    image = result.images[0]
    return upscale_price_for_pixels(image.width * image.height)


def upscale_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(
        task="upscale",
        images=[inputs["image"]],
        options=UpscaleOptions(
            upscale_mode=p["upscale_mode"],
            target=p["target"],
            factor=p["factor"],
            enhance_details=p["enhance_details"],
            enhance_realism=p["enhance_realism"],
        ),
    )


class PImageRequest(WebhookFields, RequestSchema):
    prompt: Prompt
    images: Annotated[list[ImageUrl], Field(min_length=1, max_length=3)]  # FLUX.2 [klein] takes up to 3 references
    turbo: Bool = True
    seed: Seed | None = None
    aspect_ratio: Literal["match_input_image", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"] = "match_input_image"
    disable_safety_checker: Bool = False


def p_image_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    images = inputs["images"]
    if p["aspect_ratio"] == "match_input_image":
        width, height = fit_pixels(images[0].size, NATIVE_AREA, upscale=True)
    else:
        width, height = size_for_aspect(p["aspect_ratio"], 1.0)
    return EngineCall(
        task="edit",
        prompt=p["prompt"],
        images=images,
        width=width,
        height=height,
        seed=p["seed"],
        guidance_scale=1.0,
        options=Flux2Options(turbo=p["turbo"]),
    )


MODELS = [
    ModelSpec(
        id="p-image-upscale",
        title="P-Image Upscale (Real-ESRGAN x4plus)",
        family="realesrgan",
        task="upscale",
        engine_key=EngineKey.REALESRGAN_UPSCALE,
        default_weights="builtin:realesrgan-x4plus",
        schema=UpscaleRequest,
        routes=[Route("/p-image-upscale/v1/p-image-upscale/generate", Protocol.QUEUE)],
        price=upscale_price,
        final_price=upscale_final_price,
        price_note="$0.005 for an output up to 4 MP, $0.01 up to 8 MP (factor mode holds $0.01 and settles at completion)",
        build_call=upscale_call,
        output=lambda p: OutputOptions(
            format=p["output_format"], quality=p["output_quality"], safety_checker=not p["disable_safety_checker"]
        ),
        inputs={"image": InputKind.IMAGE},
    ),
    ModelSpec(
        id="p-image",
        title="P-Image multi-image editing (served by FLUX.2 [klein] 4B)",
        family="flux2",
        task="edit",
        engine_key=EngineKey.FLUX2_KLEIN_EDIT,
        default_weights="black-forest-labs/FLUX.2-klein-4B",
        schema=PImageRequest,
        routes=[Route("/p-image/v1/p-image-edit/generate", Protocol.QUEUE)],
        price=lambda p: usd("0.01"),
        build_call=p_image_call,
        output=lambda p: OutputOptions(format="jpeg", safety_checker=not p["disable_safety_checker"]),
        inputs={"images": InputKind.IMAGES},
    ),
]
