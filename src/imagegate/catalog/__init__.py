"""The catalog: every model imagegate serves, one module per model family."""

from __future__ import annotations

from imagegate.catalog import boogu, flux1, flux2, p_image, pixelforge
from imagegate.catalog.base import Auth, InputKind, ModelSpec, OutputOptions, Protocol, Route

MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for module in (boogu, p_image, flux2, flux1, pixelforge)
    for spec in module.MODELS
}

__all__ = ["MODELS", "Auth", "InputKind", "ModelSpec", "OutputOptions", "Protocol", "Route", "get_model"]


def get_model(model_id: str) -> ModelSpec | None:
    return MODELS.get(model_id)
