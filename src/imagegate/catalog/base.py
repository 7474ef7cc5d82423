"""What a catalog model is: its public routes, request schema, price and engine binding.

Each model family lives in its own module and declares :class:`ModelSpec` objects; the API
builds routes from them, the worker builds :class:`~imagegate.engines.base.EngineCall` objects
from them. Validation runs here, before anything is queued or charged.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from imagegate.engines.base import NATIVE_AREA, EngineCall
from imagegate.engines.keys import EngineKey
from imagegate.exceptions import ValidationError


class Protocol(str, enum.Enum):
    QUEUE = "queue"  # 202 {request_id, status, polling_url}
    SYNC_OUTPUT = "sync-output"  # 200 {"output": url}
    SYNC_URL = "sync-url"  # 200 {"url": url}
    BATCH = "batch"  # 202 {requestId, ...} then checkStatus
    DOJO = "dojo"  # {jobId, status, statusUrl, creditCost, creditsRemaining}


class Auth(str, enum.Enum):
    SUBSCRIPTION = "Ocp-Apim-Subscription-Key"
    SECRET = "X-Secret-Key"
    BEARER = "Authorization"


@dataclass(frozen=True)
class Route:
    path: str
    protocol: Protocol
    auth: Auth = Auth.SUBSCRIPTION
    method: str = "POST"
    # A route may speak another body than the model's main schema (the dojo protocol's `image`
    # for `image_url`); `rename` maps its fields onto the model's, `fixed` adds route behaviour.
    schema: type["RequestSchema"] | None = None
    rename: tuple[tuple[str, str], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()


class InputKind(str, enum.Enum):
    IMAGE = "image"  # one URL -> one image
    IMAGES = "images"  # list of URLs -> list of images
    MASK = "mask"  # one URL -> one grayscale image
    LORAS = "loras"  # list of {path, scale} -> local safetensors files
    DATASET = "dataset"  # an image or a zip of images -> list of images


@dataclass(frozen=True)
class OutputOptions:
    format: str  # jpeg | png | webp
    quality: int | None = None
    safety_checker: bool = True
    safety_tolerance: int | None = None
    tolerance_scale: str = "default"  # which tolerance scale the request's number belongs to


class RequestSchema(BaseModel):
    """Base of every request body: unknown fields are ignored (as hosted APIs do), no NaN."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=False, populate_by_name=True)

    sync_mode_supported: ClassVar[bool] = False


Inputs = dict[str, Any]

# The request fields that ask for several images, in the names the seeds give them.
IMAGE_COUNT_FIELDS = ("num_images", "num_outputs")


@dataclass
class ModelSpec:
    id: str  # catalog id: `imagegate models disable ID`, config [models.ID]
    title: str
    family: str
    task: str
    engine_key: EngineKey
    default_weights: str  # hub id of the recommended open weights
    schema: type[RequestSchema]
    routes: list[Route]
    # Micro-dollars for these validated params; None = unpriced in the seed: the configured
    # default price per image applies (imagegate.billing.pricing).
    price: Callable[[dict[str, Any]], int] | None
    build_call: Callable[[dict[str, Any], Inputs], EngineCall]
    output: Callable[[dict[str, Any]], OutputOptions]
    inputs: dict[str, InputKind] = field(default_factory=dict)
    public_id: str | None = None  # the id in request ids and messages, when the seed uses another
    # The most the price can be, when it depends on inputs only the worker sees (input size).
    max_price: Callable[[dict[str, Any]], int] | None = None
    # The exact price once the engine result is known (settled at completion, never above the hold).
    final_price: Callable[[dict[str, Any], Any], int] | None = None
    # The price rule in words, where it depends on more than the number of images (sizes, modes).
    price_note: str | None = None

    @property
    def request_model_id(self) -> str:
        return self.public_id or self.id

    def validate(self, body: Any, route: Route | None = None) -> dict[str, Any]:
        schema = (route.schema if route and route.schema else None) or self.schema
        params = validate_body(schema, body)
        if route is not None:
            for src, dst in route.rename:
                if src in params:
                    params[dst] = params.pop(src)
            params.update(dict(route.fixed))
        return params

    def defaults(self) -> dict[str, Any]:
        """The parameters of a request that sets nothing (required fields are absent)."""
        return self.schema.model_construct().model_dump(mode="json")

    def image_count(self, params: dict[str, Any]) -> int:
        return int(next((params[name] for name in IMAGE_COUNT_FIELDS if params.get(name)), 1))


# -- validation -----------------------------------------------------------------------------------


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "is-instance", "nullable"}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        # Union members and validator wrappers show up in pydantic's locations; they are not
        # field names a client would recognise.
        if isinstance(part, str) and ("[" in part or part in _UNION_TAGS):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "string": "a string",
    "list": "an array",
    "dict": "an object",
    "model": "an object",
}


def _rule(err: dict[str, Any]) -> str:
    kind: str = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        word = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}[kind]
        bound = next(iter(ctx.values())) if ctx else ""
        return f"must be {word} {bound}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of: {expected}"
    if kind in ("too_short", "too_long"):
        if "min_length" in ctx:
            return f"must have at least {ctx['min_length']} item(s)" if kind == "too_short" else err["msg"]
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_unicode":
        return "must be valid Unicode text (it contains an unpaired surrogate escape)"
    for suffix, word in _TYPE_WORDS.items():
        if kind.startswith(suffix + "_") or kind == suffix + "_type":
            if kind.endswith(("_type", "_parsing", "_from_float")):
                return f"must be {word}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    return err["msg"]


Body = TypeVar("Body", bound=BaseModel)


def parse_body(schema: type[Body], body: Any) -> Body:
    """``body`` validated by ``schema``; the first problem raises ValidationError naming the
    field and the rule."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    try:
        return schema.model_validate(body)
    except PydanticValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field, rule = _loc(first["loc"]), _rule(first)
        # Validators that check several fields name the one at fault at the start of their text.
        head, _, rest = rule.partition(" ")
        if rest and (head in schema.model_fields or head.split(".")[0] in schema.model_fields):
            field, rule = head, rest
        raise ValidationError(field or "body", rule) from exc


def validate_body(schema: type[RequestSchema], body: Any) -> dict[str, Any]:
    return parse_body(schema, body).model_dump(mode="json")


# -- sizes ----------------------------------------------------------------------------------------

IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

# FLUX.2 [pro] presets (row 8): about one megapixel, sides multiples of 16.
FLUX2_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "portrait_4_5": (912, 1136),
    "portrait_9_16": (768, 1360),
    "square_1_1": (1024, 1024),
    "landscape_3_2": (1248, 832),
    "landscape_4_3": (1184, 880),
    "landscape_16_9": (1360, 768),
    "landscape_21_9": (1568, 672),
}


def round16(value: float) -> int:
    return max(16, int(round(value / 16.0)) * 16)


def fit_pixels(size: tuple[int, int], pixels: float, *, upscale: bool) -> tuple[int, int]:
    """An input image's size scaled to about ``pixels`` (aspect kept, sides multiples of 16);
    with ``upscale=False`` a smaller image keeps its size."""
    w, h = size
    scale = (pixels / float(w * h)) ** 0.5
    if not upscale:
        scale = min(1.0, scale)
    return round16(w * scale), round16(h * scale)


def size_for_aspect(aspect: str, areas: float) -> tuple[int, int]:
    """'16:9' at ``areas`` times the models' native area (1024x1024) -> (w, h), multiples of 16."""
    a, b = (int(x) for x in aspect.split(":"))
    pixels = areas * NATIVE_AREA
    height = math.sqrt(pixels * b / a)
    return round16(height * a / b), round16(height)


def check_custom_size(value: dict[str, Any], field_name: str, max_side: int, min_side: int = 64) -> tuple[int, int]:
    width, height = value.get("width"), value.get("height")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{field_name}.{name} must be an integer")
        if v % 16:
            raise ValueError(f"{field_name}.{name} must be a multiple of 16")
        if not min_side <= v <= max_side:
            raise ValueError(f"{field_name}.{name} must be between {min_side} and {max_side}")
    return width, height  # type: ignore[return-value]


# -- pricing ----------------------------------------------------------------------------------------


def usd(text: str) -> int:
    from imagegate.billing.money import parse_usd

    return parse_usd(text)
