"""Prices: the catalog's, an operator's override, or the configured default for unpriced models."""

from __future__ import annotations

import enum
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


def override_for(spec: ModelSpec, settings: Settings, runtime_micros: int | None = None) -> int | None:
    """The flat price per image that replaces the catalog's, if any: the operator's runtime
    override (admin API, ``imagegate models price``) first, then the config's ``price_usd``."""
    if runtime_micros is not None:
        return runtime_micros
    configured = settings.model(spec.id).price_usd
    return None if configured is None else parse_usd(configured)


class PriceSource(str, enum.Enum):
    RUNTIME = "runtime"  # the operator's override, set while serving
    CONFIG = "config"  # [models.<id>] price_usd
    CATALOG = "catalog"  # the seed's price rule
    DEFAULT = "default"  # default_price_usd per image, for models the seeds do not price


def price_source(spec: ModelSpec, settings: Settings, runtime_micros: int | None = None) -> PriceSource:
    if runtime_micros is not None:
        return PriceSource.RUNTIME
    if settings.model(spec.id).price_usd is not None:
        return PriceSource.CONFIG
    return PriceSource.DEFAULT if spec.price is None else PriceSource.CATALOG


def price_for(spec: ModelSpec, params: dict[str, Any], settings: Settings, runtime_micros: int | None = None) -> int:
    """What is held at submit: the exact price, or the most it can be (see final_price_for)."""
    override = override_for(spec, settings, runtime_micros)
    if override is not None:
        return override * spec.image_count(params)
    if spec.price is None:
        return parse_usd(settings.default_price_usd) * spec.image_count(params)
    return spec.price(params)


def price_of_defaults(spec: ModelSpec, settings: Settings, images: int = 1, runtime_micros: int | None = None) -> int | None:
    """What a request that leaves every priced parameter at its default costs (what listings
    show), asking for ``images`` images where the model makes several; None when the price needs
    an input the defaults lack."""
    params = spec.defaults()
    for name in IMAGE_COUNT_FIELDS:
        if name in params:
            params[name] = images
    try:
        return price_for(spec, params, settings, runtime_micros)
    except (KeyError, TypeError, ValueError):
        return None


def final_price_for(
    spec: ModelSpec, params: dict[str, Any], result: Any, held: int, settings: Settings, runtime_micros: int | None = None
) -> int:
    """The charge once the result is known; never more than what was held. A flat override
    priced the job at submit already."""
    if spec.final_price is None or override_for(spec, settings, runtime_micros) is not None:
        return held
    return min(held, spec.final_price(params, result))
