"""Field types shared by the request schemas: prompts, seeds, sizes, URLs, webhooks, LoRAs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, WithJsonSchema

from imagegate.catalog.base import FLUX2_SIZE_PRESETS, IMAGE_SIZE_PRESETS, check_custom_size

MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**32 - 1


def non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _url(value: str) -> str:
    from imagegate.exceptions import ValidationError
    from imagegate.media.inputs import check_url

    try:
        check_url(value, field="url", allow_data=True)
    except ValidationError as exc:
        # Let pydantic attach the field's location to the rule.
        raise ValueError(exc.rule) from exc
    return value


def _no_controls(value: str) -> str:
    # A webhook target is stored and later dialled; NUL and other control characters have no
    # place in a URL (and PostgreSQL text columns refuse NUL outright).
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


# `pattern` only documents the non-blank rule in the OpenAPI schema; non_blank() enforces it.
Prompt = Annotated[
    StrictStr, Field(max_length=MAX_PROMPT_CHARS, json_schema_extra={"pattern": r"\S"}), AfterValidator(non_blank)
]
OptionalText = Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Number = StrictFloat | StrictInt
Bool = StrictBool
ImageUrl = Annotated[
    StrictStr,
    Field(min_length=1, json_schema_extra={"pattern": r"^(?:[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+|[Dd][Aa][Tt][Aa]:[^,]*,)"}),
    AfterValidator(_url),
]
WebhookUrl = Annotated[StrictStr, Field(max_length=2048), AfterValidator(_no_controls)]


def ranged_int(lo: int, hi: int) -> Any:
    return Annotated[StrictInt, Field(ge=lo, le=hi)]


def ranged_float(lo: float, hi: float) -> Any:
    # Bounds on a union end up as non-standard "ge"/"le" keys in the JSON schema; state them as
    # JSON Schema's minimum/maximum so the OpenAPI document carries the range.
    return Annotated[
        StrictFloat | StrictInt, Field(ge=lo, le=hi), WithJsonSchema({"type": "number", "minimum": lo, "maximum": hi})
    ]


def image_size_field(max_side: int = 2048, presets: dict[str, tuple[int, int]] = IMAGE_SIZE_PRESETS) -> Any:
    names = ", ".join(presets)

    def check(value: Any) -> Any:
        if isinstance(value, str):
            if value not in presets:
                raise ValueError(f"must be one of: {names}, or an object {{width, height}}")
            return value
        if isinstance(value, dict):
            width, height = check_custom_size(value, "image_size", max_side)
            return {"width": width, "height": height}
        raise ValueError(f"must be one of: {names}, or an object {{width, height}}")

    side = {"type": "integer", "minimum": 64, "maximum": max_side, "multipleOf": 16}
    schema = {
        "anyOf": [
            {"type": "string", "enum": list(presets)},
            {"type": "object", "properties": {"width": side, "height": side}, "required": ["width", "height"]},
        ]
    }
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]


def resolve_image_size(value: Any, presets: dict[str, tuple[int, int]] = IMAGE_SIZE_PRESETS) -> tuple[int, int]:
    if isinstance(value, dict):
        return int(value["width"]), int(value["height"])
    if value in presets:
        return presets[value]
    return FLUX2_SIZE_PRESETS[value]


class LoraWeight(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    path: ImageUrl
    scale: ranged_float(0, 2) = 1.0


WEBHOOK_EVENTS = ("start", "output", "logs", "completed", "complete", "failed", "*")
WebhookEvent = Literal["start", "output", "logs", "completed", "complete", "failed", "*"]


class WebhookFields(BaseModel):
    """The body-level webhook of rows 5, 10 and 21 (checked for scheme by the API layer)."""

    webhook: WebhookUrl | None = None
    webhook_events_filter: list[WebhookEvent] = Field(default_factory=lambda: ["*"], min_length=1, max_length=7)
