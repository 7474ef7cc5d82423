"""Prices: the catalog's, an operator's override, or the configured default for unpriced models."""

from __future__ import annotations

from typing import Any

from imagegate.billing.money import parse_usd
from imagegate.catalog.base import IMAGE_COUNT_FIELDS, ModelSpec
from imagegate.config import Settings

# One credit of the dojo protocol (row 3) in USD.
CREDIT_USD = "0.01"


def credit_micros() -> int:
    return parse_usd(CREDIT_USD)


def to_credits(micros: int) -> float:
    credits = micros / credit_micros()
    return int(credits) if credits == int(credits) else round(credits, 4)


def price_for(spec: ModelSpec, params: dict[str, Any], settings: Settings) -> int:
    """What is held at submit: the exact price, or the most it can be (see final_price_for)."""
    override = settings.model(spec.id).price_usd
    if override is not None:
        return parse_usd(override) * spec.image_count(params)
    if spec.price is None:
        return parse_usd(settings.default_price_usd) * spec.image_count(params)
    return spec.price(params)


def price_of_defaults(spec: ModelSpec, settings: Settings, images: int = 1) -> int | None:
    """What a request that leaves every priced parameter at its default costs, asking for
    ``images`` images where the model makes several; None when the price needs an input the
    defaults lack."""
    params = spec.defaults()
    for name in IMAGE_COUNT_FIELDS:
        if name in params:
            params[name] = images
    try:
        return price_for(spec, params, settings)
    except (KeyError, TypeError, ValueError):
        return None


def final_price_for(spec: ModelSpec, params: dict[str, Any], result: Any, held: int, settings: Settings) -> int:
    """The charge once the result is known; never more than what was held."""
    if spec.final_price is None or settings.model(spec.id).price_usd is not None:
        return held
    return min(held, spec.final_price(params, result))
