"""FLUX.1 family: [schnell], [dev], Fill, Kontext (rows 10, 13–19 of the inventory).

Open weights stand in for the hosted [pro] tiers: FLUX.1 [dev] serves ``flux-pro`` and
``flux-pro-1-1`` (guidance-distilled, the closest open relative).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from imagegate.catalog.base import (
    Auth,
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
from imagegate.catalog.fields import (
    Bool,
    ImageUrl,
    Prompt,
    Seed,
    WebhookFields,
    WebhookUrl,
    image_size_field,
    ranged_float,
    ranged_int,
    resolve_image_size,
)
from imagegate.catalog.prompts import enhance, sanitize
from imagegate.engines.base import NATIVE_AREA, RESTORE_PROMPT, EngineCall
from imagegate.engines.keys import EngineKey

DEV_WEIGHTS = "black-forest-labs/FLUX.1-dev"
SCHNELL_WEIGHTS = "black-forest-labs/FLUX.1-schnell"

# FLUX1.1 [pro] ultra renders "up to 2K": about twice the native 1024x1024 area for every aspect ratio.
ULTRA_AREAS = 2.0
# `raw` asks for less processed images: a lower distilled guidance gives flatter, more natural
# contrast and colour on FLUX.1 [dev]; the default is the model card's 3.5.
ULTRA_GUIDANCE = 3.5
RAW_GUIDANCE = 2.0


def per_image(price: str) -> Any:
    return lambda p: usd(price) * int(p.get("num_images") or p.get("num_outputs") or 1)


# -- flux-1-schnell (rows 14, 15) ------------------------------------------------------------------


class SchnellRequest(RequestSchema):
    prompt: Prompt
    num_steps: ranged_int(1, 8) = 4
    seed: Seed | None = None
    width: ranged_int(64, 2048) = 1024
    height: ranged_int(64, 2048) = 1024


class SchnellBatchRequest(SchnellRequest):
    webhook_url: WebhookUrl | None = None


def schnell_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    prompt = sanitize(p["prompt"]) if p.get("_sanitize") else p["prompt"]
    return EngineCall(
        task="text-to-image",
        prompt=prompt,
        width=p["width"],
        height=p["height"],
        num_inference_steps=p["num_steps"],
        guidance_scale=0.0,
        seed=p["seed"],
    )


# -- flux-pro, flux-dev (rows 16, 18) ---------------------------------------------------------------


class FluxT2IRequest(RequestSchema):
    prompt: Prompt
    image_size: image_size_field() = "landscape_4_3"
    num_inference_steps: ranged_int(1, 50) = 28
    guidance_scale: ranged_float(1, 20) = 3.5
    num_images: ranged_int(1, 4) = 1
    enable_safety_checker: Bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    seed: Seed | None = None
    sync_mode: Bool = False


class FluxDevRequest(FluxT2IRequest):
    acceleration: Literal["none", "regular", "high"] = "none"


def t2i_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    width, height = resolve_image_size(p["image_size"])
    return EngineCall(
        task="text-to-image",
        prompt=p["prompt"],
        width=width,
        height=height,
        num_images=p["num_images"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=p["guidance_scale"],
        seed=p["seed"],
        acceleration=p.get("acceleration", "none"),
    )


def t2i_output(p: dict[str, Any]) -> OutputOptions:
    return OutputOptions(format=p["output_format"], safety_checker=p["enable_safety_checker"])


# -- flux-dev image-to-image (row 17) ----------------------------------------------------------------


class FluxImg2ImgRequest(FluxDevRequest):
    image_url: ImageUrl
    strength: ranged_float(0.01, 1.0) = 0.95
    num_inference_steps: ranged_int(1, 50) = 40


def img2img_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    image = inputs["image_url"]
    width, height = fit_pixels(image.size, 2 * NATIVE_AREA, upscale=False)
    return EngineCall(
        task="image-to-image",
        prompt=p["prompt"],
        images=[image],
        width=width,
        height=height,
        strength=p["strength"],
        num_images=p["num_images"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=p["guidance_scale"],
        seed=p["seed"],
        acceleration=p["acceleration"],
    )


# -- flux-pro-1-1 ultra (row 13) ---------------------------------------------------------------------

ULTRA_ASPECTS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")


class FluxUltraRequest(RequestSchema):
    prompt: Prompt
    seed: Seed | None = None
    sync_mode: Bool = False
    num_images: ranged_int(1, 4) = 1
    enable_safety_checker: Bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    safety_tolerance: Literal["1", "2", "3", "4", "5", "6"] = "2"
    enhance_prompt: Bool = False
    aspect_ratio: Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"] = "16:9"
    raw: Bool = False

    @field_validator("safety_tolerance", mode="before")
    @classmethod
    def _tolerance_as_text(cls, value: Any) -> Any:
        # The seed documents strings; integers are accepted as the same level.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def ultra_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    width, height = size_for_aspect(p["aspect_ratio"], ULTRA_AREAS)
    prompt = enhance(p["prompt"]) if p["enhance_prompt"] and not p["raw"] else p["prompt"]
    return EngineCall(
        task="text-to-image",
        prompt=prompt,
        width=width,
        height=height,
        num_images=p["num_images"],
        num_inference_steps=28,
        guidance_scale=RAW_GUIDANCE if p["raw"] else ULTRA_GUIDANCE,
        seed=p["seed"],
    )


def ultra_output(p: dict[str, Any]) -> OutputOptions:
    return OutputOptions(
        format=p["output_format"],
        safety_checker=p["enable_safety_checker"],
        safety_tolerance=int(p["safety_tolerance"]),
        tolerance_scale="1-6",
    )


# -- flux-fill-dev (row 19) ---------------------------------------------------------------------------


class FluxFillRequest(RequestSchema):
    prompt: Prompt
    image: ImageUrl
    mask: ImageUrl
    seed: Seed | None = None
    guidance: ranged_float(1.5, 100) = 30
    num_outputs: ranged_int(1, 4) = 1
    num_inference_steps: ranged_int(1, 50) = 28
    megapixels: Literal["0.25", "1", "match_input"] = "1"
    output_format: Literal["webp", "jpg", "png"] = "webp"
    output_quality: ranged_int(0, 100) = 80
    lora_scale: ranged_float(0, 2) = 1
    disable_safety_checker: Bool = False


def fill_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    image = inputs["image"]
    if p["megapixels"] == "match_input":
        width, height = fit_pixels(image.size, 4 * NATIVE_AREA, upscale=False)
    else:
        width, height = fit_pixels(image.size, float(p["megapixels"]) * NATIVE_AREA, upscale=True)
    return EngineCall(
        task="inpaint",
        prompt=p["prompt"],
        images=[image],
        mask=inputs["mask"],
        width=width,
        height=height,
        num_images=p["num_outputs"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=p["guidance"],
        seed=p["seed"],
    )


def fill_output(p: dict[str, Any]) -> OutputOptions:
    return OutputOptions(format=p["output_format"], quality=p["output_quality"], safety_checker=not p["disable_safety_checker"])


# -- flux-kontext-restore-image (row 10) -----------------------------------------------------------------

class KontextRestoreRequest(WebhookFields, RequestSchema):
    input_image: ImageUrl
    seed: Seed | None = None
    output_format: Literal["jpg", "png"] = "png"
    safety_tolerance: ranged_int(0, 2) = 2


def restore_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    image = inputs["input_image"]
    width, height = fit_pixels(image.size, NATIVE_AREA, upscale=False)
    return EngineCall(
        task="restore",
        prompt=RESTORE_PROMPT,
        images=[image],
        width=width,
        height=height,
        num_inference_steps=28,
        guidance_scale=2.5,
        seed=p["seed"],
    )


def restore_output(p: dict[str, Any]) -> OutputOptions:
    return OutputOptions(format=p["output_format"], safety_tolerance=p["safety_tolerance"], tolerance_scale="0-2")


MODELS = [
    ModelSpec(
        id="flux-kontext-restore-image",
        title="FLUX.1 Kontext photo restoration",
        family="flux1",
        task="restore",
        engine_key=EngineKey.FLUX1_KONTEXT,
        default_weights="black-forest-labs/FLUX.1-Kontext-dev",
        schema=KontextRestoreRequest,
        routes=[Route("/flux-kontext-restore-image/v1/flux-kontext-restore-image/generate", Protocol.QUEUE)],
        price=lambda p: usd("0.04"),
        build_call=restore_call,
        output=restore_output,
        inputs={"input_image": InputKind.IMAGE},
    ),
    ModelSpec(
        id="flux-pro-1-1",
        title="FLUX1.1 [pro] ultra (served by FLUX.1 [dev])",
        family="flux1",
        task="text-to-image",
        engine_key=EngineKey.FLUX1_TEXT_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=FluxUltraRequest,
        routes=[Route("/pro1.1/v1/pro1.1ultra/generateRequest", Protocol.QUEUE)],
        price=per_image("0.08"),
        build_call=ultra_call,
        output=ultra_output,
    ),
    ModelSpec(
        id="flux-1-schnell",
        title="FLUX.1 [schnell]",
        family="flux1",
        task="text-to-image",
        engine_key=EngineKey.FLUX1_TEXT_TO_IMAGE,
        default_weights=SCHNELL_WEIGHTS,
        schema=SchnellRequest,
        routes=[
            Route("/flux-1-schnell/v1/getData", Protocol.SYNC_OUTPUT),
            Route(
                "/flux-1-schnell/v1/getDataBatch",
                Protocol.BATCH,
                Auth.SECRET,
                schema=SchnellBatchRequest,
                fixed=(("_sanitize", True),),
            ),
        ],
        price=lambda p: 0,
        build_call=schnell_call,
        output=lambda p: OutputOptions(format="png"),
    ),
    ModelSpec(
        id="flux-pro",
        title="FLUX.1 [pro] text-to-image (served by FLUX.1 [dev])",
        family="flux1",
        task="text-to-image",
        engine_key=EngineKey.FLUX1_TEXT_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=FluxT2IRequest,
        routes=[Route("/flux-pro/v1/pro/textToImage", Protocol.QUEUE)],
        price=per_image("0.03"),
        build_call=t2i_call,
        output=t2i_output,
    ),
    ModelSpec(
        id="flux-dev-i2i",
        public_id="flux-dev",
        title="FLUX.1 [dev] image-to-image",
        family="flux1",
        task="image-to-image",
        engine_key=EngineKey.FLUX1_IMAGE_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=FluxImg2ImgRequest,
        routes=[Route("/flux-dev/v1/dev/imageToImage", Protocol.QUEUE)],
        price=per_image("0.025"),
        build_call=img2img_call,
        output=t2i_output,
        inputs={"image_url": InputKind.IMAGE},
    ),
    ModelSpec(
        id="flux-dev",
        title="FLUX.1 [dev] text-to-image",
        family="flux1",
        task="text-to-image",
        engine_key=EngineKey.FLUX1_TEXT_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=FluxDevRequest,
        routes=[Route("/flux-dev/v1/dev/textToImage", Protocol.QUEUE)],
        price=per_image("0.025"),
        build_call=t2i_call,
        output=t2i_output,
    ),
    ModelSpec(
        id="flux-fill-dev",
        title="FLUX.1 Fill [dev] inpainting",
        family="flux1",
        task="inpaint",
        engine_key=EngineKey.FLUX1_FILL,
        default_weights="black-forest-labs/FLUX.1-Fill-dev",
        schema=FluxFillRequest,
        routes=[Route("/flux-fill-dev/v1/flux-fill/generate", Protocol.QUEUE)],
        price=per_image("0.04"),
        build_call=fill_call,
        output=fill_output,
        inputs={"image": InputKind.IMAGE, "mask": InputKind.MASK},
    ),
]
