"""The OpenAI-compatible images API: its request bodies, and how they map onto a catalog model.

``model`` names a catalog model. Every OpenAI field goes to the parameter that model has for it
(``n`` to ``num_images`` or ``num_outputs``; ``size`` to ``image_size``, ``width``/``height`` or
``aspect_ratio``; ``steps`` to ``num_inference_steps``, ``num_steps`` or ``steps``; …), and the
result is validated by the model's own request schema, exactly as its native endpoint validates
it. A field the model has no parameter for is refused rather than silently dropped, and every
error names the OpenAI field.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imagegate.catalog import MODELS, Auth, InputKind, ModelSpec
from imagegate.catalog.base import IMAGE_COUNT_FIELDS
from imagegate.exceptions import ValidationError

PREFIX = "/v1/"
GENERATIONS_PATH = PREFIX + "images/generations"
EDITS_PATH = PREFIX + "images/edits"
# Job.protocol of the requests made through these routes.
PROTOCOL = "openai"
AUTH = Auth.BEARER

STEPS_FIELDS = ("num_inference_steps", "num_steps", "steps")
GUIDANCE_FIELDS = ("guidance_scale", "guidance")
OPENAI_OUTPUT_FORMATS = ("png", "jpeg", "webp")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


class _OpenAIBody(BaseModel):
    # Lax types: multipart forms carry every value as text, and "2" is the number 2 there.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageGenerationRequest(_OpenAIBody):
    """``POST /v1/images/generations``. Fields OpenAI defines that imagegate has no use for
    (``quality``, ``style``, ``user``, …) are ignored."""

    prompt: str
    model: str | None = Field(default=None, description="A catalog model id; default: the openai_default_model setting")
    n: Annotated[int, Field(ge=1, le=10)] | None = None
    size: str | None = Field(default=None, description='"auto" or "WIDTHxHEIGHT"')
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None


class ImageReference(_OpenAIBody):
    image_url: str


class ImageEditRequest(ImageGenerationRequest):
    """``POST /v1/images/edits`` as JSON: images by URL (``image`` as one URL or a list, or
    ``images: [{"image_url"}]``), ``mask`` as a URL or ``{"image_url"}``. As multipart, the
    ``image``/``image[]`` and ``mask`` parts are files instead."""

    model: str | None = Field(default=None, description="A catalog model id; default: the openai_default_edit_model setting")
    image: str | list[str] | None = None
    images: list[ImageReference] | None = None
    mask: str | ImageReference | None = None

    def image_urls(self) -> list[str]:
        if isinstance(self.image, str):
            return [self.image]
        return list(self.image or []) + [ref.image_url for ref in self.images or []]

    def mask_url(self) -> str | None:
        return self.mask.image_url if isinstance(self.mask, ImageReference) else self.mask


class SizeKind(enum.Enum):
    PRESET_OR_OBJECT = "image_size as {width, height}"
    TEXT = 'image_size as "WxH"'
    SIDES = "width and height"
    ASPECT = "aspect_ratio"


@dataclass(frozen=True)
class Binding:
    """Where one catalog model takes each OpenAI field (None: it has no parameter for it)."""

    spec: ModelSpec
    fields: frozenset[str]
    count: str | None
    steps: str | None
    guidance: str | None
    size: SizeKind | None
    aspect_ratios: tuple[str, ...]
    output_formats: dict[str, str]  # OpenAI's name of a format -> the model's
    fixed_format: str | None  # OpenAI's name of the one format a model without output_format makes
    image: str | None
    image_kind: InputKind | None
    mask: str | None

    @property
    def path(self) -> str:
        """The one OpenAI route that serves the model: edits for models that take images."""
        return EDITS_PATH if self.image else GENERATIONS_PATH

    def names(self) -> dict[str, str]:
        """The model's parameter names -> the OpenAI fields they come from."""
        pairs = {
            "prompt": "prompt",
            self.count: "n",
            self.steps: "steps",
            self.guidance: "guidance",
            self.image: "image",
            self.mask: "mask",
            "seed": "seed",
            "negative_prompt": "negative_prompt",
            "output_format": "output_format",
            "image_size": "size",
            "width": "size",
            "height": "size",
            "aspect_ratio": "size",
        }
        return {native: ours for native, ours in pairs.items() if native is not None}

    def field_of(self, error: str | None) -> str | None:
        """The OpenAI field a job's error names ("image_url: could not fetch …" -> "image")."""
        return self.names().get(_head(error)) if error else None

    def translate(self, exc: ValidationError) -> ValidationError:
        """A validation error of the model's schema, naming the OpenAI field instead."""
        head = _head(exc.field)
        ours = self.names().get(head)
        if ours is None:
            return exc
        # A part of a parameter (image_size.width, image_urls[1]) is named in the model's terms.
        return ValidationError(ours, f"({exc.field}) {exc.rule}" if exc.field != head else exc.rule)


def _head(field: str) -> str:
    """The parameter a field path or an error text starts with: "image_urls[1]: …" -> "image_urls"."""
    return re.split(r"[.\[:]", field, maxsplit=1)[0]


def _first(candidates: tuple[str, ...], fields: frozenset[str]) -> str | None:
    return next((name for name in candidates if name in fields), None)


def binding(spec: ModelSpec) -> Binding | None:
    """How the OpenAI fields reach the model; None for models that take no prompt (the upscaler,
    the restorer, the trainers), which OpenAI's images API cannot express."""
    return _binding(spec.id)


@cache
def _binding(model_id: str) -> Binding | None:
    spec = MODELS[model_id]
    fields = frozenset(spec.schema.model_fields)
    if "prompt" not in fields:
        return None
    properties = spec.schema.model_json_schema()["properties"]
    size, ratios = _size_kind(properties)
    formats = properties.get("output_format", {}).get("enum", [])
    output_formats = {name: name for name in OPENAI_OUTPUT_FORMATS if name in formats}
    if "jpeg" not in output_formats and "jpg" in formats:
        output_formats["jpeg"] = "jpg"
    fixed = None if formats else spec.output(spec.defaults()).format
    images = [(name, kind) for name, kind in spec.inputs.items() if kind in (InputKind.IMAGE, InputKind.IMAGES)]
    masks = [name for name, kind in spec.inputs.items() if kind is InputKind.MASK]
    return Binding(
        spec=spec,
        fields=fields,
        count=_first(IMAGE_COUNT_FIELDS, fields),
        steps=_first(STEPS_FIELDS, fields),
        guidance=_first(GUIDANCE_FIELDS, fields),
        size=size,
        aspect_ratios=ratios,
        output_formats=output_formats,
        fixed_format={"jpg": "jpeg"}.get(fixed, fixed) if fixed else None,
        image=images[0][0] if images else None,
        image_kind=images[0][1] if images else None,
        mask=masks[0] if masks else None,
    )


def _size_kind(properties: dict[str, Any]) -> tuple[SizeKind | None, tuple[str, ...]]:
    if "image_size" in properties:
        options = properties["image_size"].get("anyOf", [])
        takes_object = any(option.get("type") == "object" for option in options)
        return (SizeKind.PRESET_OR_OBJECT if takes_object else SizeKind.TEXT), ()
    if "width" in properties and "height" in properties:
        return SizeKind.SIDES, ()
    if "aspect_ratio" in properties:
        ratios = tuple(r for r in properties["aspect_ratio"].get("enum", []) if re.fullmatch(r"[0-9]+:[0-9]+", r))
        return SizeKind.ASPECT, ratios
    return None, ()


def native_body(b: Binding, request: ImageGenerationRequest, images: list[str], mask: str | None) -> dict[str, Any]:
    """The body the model's native endpoint would receive for this OpenAI request (its own
    defaults for every field the request leaves out)."""
    model = b.spec.id
    body: dict[str, Any] = {"prompt": request.prompt}
    if request.n is not None:
        if b.count is not None:
            body[b.count] = request.n
        elif request.n != 1:
            raise ValidationError("n", f"must be 1 for model '{model}' (it makes one image per request)")
    if request.size is not None and request.size != "auto":
        body.update(_size(b, request.size))
    for ours, native in (("steps", b.steps), ("guidance", b.guidance), ("seed", "seed"), ("negative_prompt", "negative_prompt")):
        value = getattr(request, ours)
        if value is None:
            continue
        if native is None or native not in b.fields:
            raise ValidationError(ours, f"is not a parameter of model '{model}'")
        body[native] = value
    if request.output_format is not None and request.output_format != b.fixed_format:
        if request.output_format not in b.output_formats:
            offered = ", ".join(b.output_formats) or b.fixed_format
            raise ValidationError("output_format", f"must be one of: {offered} for model '{model}'")
        body["output_format"] = b.output_formats[request.output_format]
    if b.image is not None:
        if not images:
            raise ValidationError("image", "is required")
        if b.image_kind is InputKind.IMAGE and len(images) > 1:
            raise ValidationError("image", f"must be one image for model '{model}' (got {len(images)})")
        body[b.image] = images[0] if b.image_kind is InputKind.IMAGE else images
    if mask is not None:
        if b.mask is None:
            raise ValidationError("mask", f"is not a parameter of model '{model}'")
        body[b.mask] = mask
    return body


def _size(b: Binding, size: str) -> dict[str, Any]:
    match = _SIZE.fullmatch(size.strip().lower())
    if match is None:
        raise ValidationError("size", 'must be "auto" or "WIDTHxHEIGHT", e.g. "1024x1024"')
    width, height = int(match[1]), int(match[2])
    if width == 0 or height == 0:
        raise ValidationError("size", "must have sides of at least 1 pixel")
    if b.size is SizeKind.PRESET_OR_OBJECT:
        return {"image_size": {"width": width, "height": height}}
    if b.size is SizeKind.TEXT:
        return {"image_size": f"{width}x{height}"}
    if b.size is SizeKind.SIDES:
        return {"width": width, "height": height}
    if b.size is SizeKind.ASPECT:
        divisor = math.gcd(width, height)
        ratio = f"{width // divisor}:{height // divisor}"
        if ratio not in b.aspect_ratios:
            raise ValidationError(
                "size", f"must be \"auto\" or have one of the aspect ratios {', '.join(b.aspect_ratios)} for model '{b.spec.id}' (got {ratio})"
            )
        return {"aspect_ratio": ratio}
    raise ValidationError("size", f"must be \"auto\" for model '{b.spec.id}' (it sets its own size)")
