"""PixelForge: reference-guided generation and relighting (rows 20, 21)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictStr

from imagegate.catalog.base import InputKind, ModelSpec, OutputOptions, Protocol, RequestSchema, Route, fit_pixels
from imagegate.catalog.fields import (
    Bool,
    ImageUrl,
    LoraWeight,
    OptionalText,
    Prompt,
    Seed,
    WebhookFields,
    image_size_field,
    non_blank,
    ranged_float,
    ranged_int,
    resolve_image_size,
)
from imagegate.engines.base import NATIVE_AREA, EngineCall, Flux2Options
from imagegate.engines.keys import EngineKey


class PixelforgeImageRequest(RequestSchema):
    prompt: Prompt
    image_urls: Annotated[list[ImageUrl], Field(min_length=1, max_length=3)]
    seed: Seed | None = None


def image_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    images = inputs["image_urls"]
    width, height = fit_pixels(images[0].size, NATIVE_AREA, upscale=True)
    return EngineCall(
        task="edit",
        prompt=p["prompt"],
        images=images,
        width=width,
        height=height,
        seed=p["seed"],
        guidance_scale=1.0,
        options=Flux2Options(turbo=True),
    )


RelightPrompt = Annotated[StrictStr, Field(max_length=800, json_schema_extra={"pattern": r"\S"}), AfterValidator(non_blank)]


class RelightRequest(WebhookFields, RequestSchema):
    prompt: RelightPrompt
    image_urls: Annotated[list[ImageUrl], Field(min_length=1, max_length=10)]
    image_size: image_size_field() = "square_hd"
    num_inference_steps: ranged_int(1, 150) = 50
    guidance_scale: ranged_float(1, 20) = 4
    num_images: ranged_int(1, 4) = 1
    enable_safety_checker: Bool = True
    output_format: Literal["png", "jpeg"] = "png"
    negative_prompt: OptionalText = " "
    acceleration: Literal["none", "regular"] = "regular"
    loras: Annotated[list[LoraWeight], Field(max_length=3)] = Field(default_factory=list)
    seed: Seed | None = None


def relight_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    width, height = resolve_image_size(p["image_size"])
    return EngineCall(
        task="edit",
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"].strip() or None,
        images=inputs["image_urls"],
        width=width,
        height=height,
        num_images=p["num_images"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=p["guidance_scale"],
        seed=p["seed"],
        acceleration=p["acceleration"],
        loras=inputs.get("loras", []),
    )


MODELS = [
    ModelSpec(
        id="pixelforge-image",
        title="PixelForge text-to-image with 1–3 reference images (FLUX.2 [klein] 4B)",
        family="flux2",
        task="edit",
        engine_key=EngineKey.FLUX2_KLEIN_EDIT,
        default_weights="black-forest-labs/FLUX.2-klein-4B",
        schema=PixelforgeImageRequest,
        routes=[Route("/pixelforge-image/v1/qwen_image_gen/serve_image", Protocol.SYNC_URL)],
        price=None,
        build_call=image_call,
        output=lambda p: OutputOptions(format="jpeg"),
        inputs={"image_urls": InputKind.IMAGES},
    ),
    ModelSpec(
        id="pixelforge-relighting-api",
        title="PixelForge relighting (FLUX.2 [dev] reference editing, LoRAs)",
        family="flux2",
        task="edit",
        engine_key=EngineKey.FLUX2_RELIGHT,
        default_weights="black-forest-labs/FLUX.2-dev",
        schema=RelightRequest,
        routes=[Route("/pixelforge-relighting-api/v1/relighting/generate", Protocol.QUEUE)],
        price=None,
        build_call=relight_call,
        output=lambda p: OutputOptions(format=p["output_format"], safety_checker=p["enable_safety_checker"]),
        inputs={"image_urls": InputKind.IMAGES, "loras": InputKind.LORAS},
    ),
]
