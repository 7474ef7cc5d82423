"""FLUX.2 family: [dev] and [klein] 4B, editing and LoRA training (rows 6–9, 11, 12)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictStr, WithJsonSchema, field_validator

from imagegate.catalog.base import (
    FLUX2_SIZE_PRESETS,
    Auth,
    InputKind,
    ModelSpec,
    OutputOptions,
    Protocol,
    RequestSchema,
    Route,
    fit_pixels,
    usd,
)
from imagegate.catalog.fields import (
    Bool,
    ImageUrl,
    Prompt,
    Seed,
    image_size_field,
    ranged_float,
    ranged_int,
    resolve_image_size,
)
from imagegate.catalog.prompts import sanitize
from imagegate.engines.base import NATIVE_AREA, EngineCall, LoraTrainingOptions
from imagegate.engines.keys import EngineKey

DEV_WEIGHTS = "black-forest-labs/FLUX.2-dev"
KLEIN_WEIGHTS = "black-forest-labs/FLUX.2-klein-4B"
DEFAULT_STEPS = 28


def _wxh(value: str) -> str:
    if value == "auto":
        return value
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise ValueError('must be "auto" or "WIDTHxHEIGHT", e.g. "1024x1024"') from None
    if not (64 <= w <= 2048 and 64 <= h <= 2048):
        raise ValueError("sides must be between 64 and 2048")
    return f"{w}x{h}"


class Flux2EditRequest(RequestSchema):
    prompt: Prompt
    image_urls: Annotated[list[ImageUrl], Field(min_length=1, max_length=10)]
    image_size: Annotated[StrictStr, AfterValidator(_wxh), Field(json_schema_extra={"pattern": "^(auto|[0-9]+[xX][0-9]+)$"})] = "auto"
    safety_tolerance: Literal["1", "2", "3"] = "2"
    enable_safety_checker: Bool = True
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    seed: Seed | None = None

    @field_validator("safety_tolerance", mode="before")
    @classmethod
    def _tolerance_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def edit_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    image = inputs["image_urls"][0]  # the seed: only the first image is processed
    if p["image_size"] == "auto":
        width, height = fit_pixels(image.size, 2 * NATIVE_AREA, upscale=False)
    else:
        width, height = (int(x) for x in p["image_size"].split("x"))
    return EngineCall(
        task="edit",
        prompt=p["prompt"],
        images=[image],
        width=width,
        height=height,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=4.0,
        seed=p["seed"],
    )


class Flux2T2IRequest(RequestSchema):
    prompt: Prompt
    image_size: image_size_field(presets=FLUX2_SIZE_PRESETS) = "landscape_4_3"
    safety_tolerance: ranged_int(1, 4) = 2
    enable_safety_checker: Bool = True
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    seed: Seed | None = None


def t2i_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    width, height = resolve_image_size(p["image_size"], FLUX2_SIZE_PRESETS)
    return EngineCall(
        task="text-to-image",
        prompt=p["prompt"],
        width=width,
        height=height,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=4.0,
        seed=p["seed"],
    )


class TrainerRequest(RequestSchema):
    image_data_url: ImageUrl
    steps: ranged_int(1, 10_000) = 1000
    learning_rate: ranged_float(1e-7, 1e-2) = 1e-4
    trigger_word: Annotated[StrictStr, Field(max_length=100)] = "TOK"


def train_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(
        task="train-lora",
        prompt=p["trigger_word"],
        images=list(inputs["image_data_url"]),
        seed=0,
        options=LoraTrainingOptions(steps=p["steps"], learning_rate=p["learning_rate"]),
    )


KLEIN_SIDES = (512, 1024, 1448, 2048)
KLEIN_PRICES = ((512 * 512, "0.0003"), (1024 * 1024, "0.0007"), (1448 * 1448, "0.0014"), (2048 * 2048, "0.0028"))


def klein_price(p: dict[str, Any]) -> int:
    pixels = p["width"] * p["height"]
    for limit, price in KLEIN_PRICES:
        if pixels <= limit:
            return usd(price)
    return usd(KLEIN_PRICES[-1][1])


KLEIN_SIDE_SCHEMA = {"type": "integer", "enum": list(KLEIN_SIDES)}


def _klein_side(value: int) -> int:
    if value not in KLEIN_SIDES:
        raise ValueError("must be one of: 512, 1024, 1448, 2048")
    return value


class KleinRequest(RequestSchema):
    prompt: Prompt
    steps: ranged_int(1, 50) = 25
    width: Annotated[int, Field(strict=True), AfterValidator(_klein_side), WithJsonSchema(KLEIN_SIDE_SCHEMA)] = 1024
    height: Annotated[int, Field(strict=True), AfterValidator(_klein_side), WithJsonSchema(KLEIN_SIDE_SCHEMA)] = 1024
    seed: Seed | None = None


def klein_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(
        task="text-to-image",
        prompt=p["prompt"],
        width=p["width"],
        height=p["height"],
        num_inference_steps=p["steps"],
        guidance_scale=1.0,
        seed=p["seed"],
    )


class Flux2DevRequest(RequestSchema):
    prompt: Prompt
    steps: ranged_int(1, 50) = DEFAULT_STEPS
    width: ranged_int(64, 2048) = 1024
    height: ranged_int(64, 2048) = 1024
    seed: Seed | None = None


def dev_call(p: dict[str, Any], inputs: dict[str, Any]) -> EngineCall:
    return EngineCall(
        task="text-to-image",
        prompt=sanitize(p["prompt"]),
        width=p["width"],
        height=p["height"],
        num_inference_steps=p["steps"],
        guidance_scale=4.0,
        seed=p["seed"],
    )


def fmt_output(p: dict[str, Any], scale: str) -> OutputOptions:
    return OutputOptions(
        format=p["output_format"],
        safety_checker=p["enable_safety_checker"],
        safety_tolerance=int(p["safety_tolerance"]),
        tolerance_scale=scale,
    )


LORA_OUTPUT = OutputOptions(format="safetensors", safety_checker=False)

MODELS = [
    ModelSpec(
        id="flux-2-pro-image-to-image-866",
        title="FLUX.2 image editing (served by FLUX.2 [dev])",
        family="flux2",
        task="edit",
        engine_key=EngineKey.FLUX2_EDIT,
        default_weights=DEV_WEIGHTS,
        schema=Flux2EditRequest,
        routes=[Route("/flux-2-pro-image-to-image-866/v1/flux-2-pro-image-to-image-request", Protocol.QUEUE)],
        price=None,
        build_call=edit_call,
        output=lambda p: fmt_output(p, "1-3"),
        inputs={"image_urls": InputKind.IMAGES},
    ),
    ModelSpec(
        id="flux-2-pro-image-to-image-trainer-831",
        title="FLUX.2 LoRA trainer from a reference image",
        family="flux2",
        task="train-lora",
        engine_key=EngineKey.FLUX2_TRAIN_LORA,
        default_weights=DEV_WEIGHTS,
        schema=TrainerRequest,
        routes=[
            Route("/flux-2-pro-image-to-image-trainer-831/v1/flux-2-pro-image-to-image-trainer-request", Protocol.QUEUE)
        ],
        price=None,
        build_call=train_call,
        output=lambda p: LORA_OUTPUT,
        inputs={"image_data_url": InputKind.DATASET},
    ),
    ModelSpec(
        id="flux-2-pro-text-to-image-799",
        title="FLUX.2 text-to-image (served by FLUX.2 [dev])",
        family="flux2",
        task="text-to-image",
        engine_key=EngineKey.FLUX2_TEXT_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=Flux2T2IRequest,
        routes=[Route("/flux-2-pro-text-to-image-799/v1/flux-2-pro-text-to-image-request", Protocol.QUEUE)],
        price=lambda p: usd("0.06"),
        build_call=t2i_call,
        output=lambda p: fmt_output(p, "1-4"),
    ),
    ModelSpec(
        id="flux-2-pro-text-to-image-trainer-712",
        title="FLUX.2 LoRA trainer from a dataset (zip of at least 10 images)",
        family="flux2",
        task="train-lora",
        engine_key=EngineKey.FLUX2_TRAIN_LORA,
        default_weights=DEV_WEIGHTS,
        schema=TrainerRequest,
        routes=[
            Route("/flux-2-pro-text-to-image-trainer-712/v1/flux-2-pro-text-to-image-trainer-request", Protocol.QUEUE)
        ],
        price=lambda p: usd("8"),
        build_call=train_call,
        output=lambda p: LORA_OUTPUT,
        inputs={"image_data_url": InputKind.DATASET},
    ),
    ModelSpec(
        id="flux-2-klein-4b",
        title="FLUX.2 [klein] 4B",
        family="flux2",
        task="text-to-image",
        engine_key=EngineKey.FLUX2_KLEIN_TEXT_TO_IMAGE,
        default_weights=KLEIN_WEIGHTS,
        schema=KleinRequest,
        routes=[Route("/flux-2-klein-4b/v1/generateImage", Protocol.SYNC_OUTPUT)],
        price=klein_price,
        price_note="$0.0003 up to 512×512, $0.0007 up to 1024×1024, $0.0014 up to 1448×1448, $0.0028 up to 2048×2048",
        build_call=klein_call,
        output=lambda p: OutputOptions(format="png"),
    ),
    ModelSpec(
        id="flux-2-dev",
        title="FLUX.2 [dev] text-to-image",
        family="flux2",
        task="text-to-image",
        engine_key=EngineKey.FLUX2_TEXT_TO_IMAGE,
        default_weights=DEV_WEIGHTS,
        schema=Flux2DevRequest,
        routes=[Route("/generateT2I", Protocol.SYNC_OUTPUT, Auth.SECRET)],
        price=None,
        build_call=dev_call,
        output=lambda p: OutputOptions(format="png"),
    ),
]

# Trainers need at least this many images in a dataset zip (row 9).
MIN_DATASET_IMAGES = {"flux-2-pro-text-to-image-trainer-712": 10, "flux-2-pro-image-to-image-trainer-831": 1}
