"""Property-based tests of every request schema the catalog publishes (in-process, no server).

For every route of every catalog model (the route's own schema where it has one):

* any JSON-ish value, objects keyed by the schema's field names, and valid bodies with one field
  swapped for anything: ``spec.validate`` returns params or raises ``ValidationError`` whose
  ``field`` is set and whose message starts with it; never any other exception. Params that
  come back must be storable (strict JSON) and priceable (what the API does next).
* bodies built from the published constraints (types, enums, ranges, lengths, item counts)
  validate, and keep the values they were given.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegate.billing.pricing import price_for
from imagegate.catalog import MODELS, ModelSpec, Route
from imagegate.config import Settings
from imagegate.exceptions import ValidationError

from .jsonish import field_dicts, field_names, json_values, valid_bodies

ROUTES = [(spec, route) for spec in MODELS.values() for route in spec.routes]
IDS = [f"{spec.id}:{route.protocol.value}" for spec, route in ROUTES]
SETTINGS = Settings(_env_file=None)  # the defaults: default price per image, no overrides

FAST = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def schema_of(spec: ModelSpec, route: Route) -> Any:
    return route.schema or spec.schema


@functools.cache
def properties_of(schema: Any) -> dict[str, Any]:
    return schema.model_json_schema()["properties"]


def check_outcome(spec: ModelSpec, route: Route, body: Any) -> dict[str, Any] | None:
    """The contract of validate(): params, or a ValidationError that names its field first."""
    try:
        params = spec.validate(body, route)
    except ValidationError as exc:
        assert exc.field, (body, exc)
        assert exc.message.startswith(exc.field + " "), (exc.field, exc.message)
        assert exc.message == str(exc)
        return None
    assert isinstance(params, dict)
    json.dumps(params, allow_nan=False)  # goes into the job store as JSON
    price = price_for(spec, params, SETTINGS)
    assert isinstance(price, int) and price >= 0, price
    spec.output(params)  # the worker's output options for these params
    return params


def mutate(body: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    return {**body, name: value}


@settings(max_examples=300, **FAST)
@given(route=st.sampled_from(ROUTES), body=json_values(max_leaves=20))
def test_any_json_value_gets_params_or_a_named_validation_error(route: tuple[ModelSpec, Route], body: Any) -> None:
    check_outcome(*route, body)


@pytest.mark.parametrize("spec, route", ROUTES, ids=IDS)
@settings(max_examples=60, **FAST)
@given(data=st.data())
def test_objects_with_the_schema_fields_get_params_or_a_named_validation_error(spec: ModelSpec, route: Route, data: st.DataObject) -> None:
    check_outcome(spec, route, data.draw(field_dicts(schema_of(spec, route))))


@pytest.mark.parametrize("spec, route", ROUTES, ids=IDS)
@settings(max_examples=60, **FAST)
@given(data=st.data())
def test_valid_body_with_one_field_swapped(spec: ModelSpec, route: Route, data: st.DataObject) -> None:
    schema = schema_of(spec, route)
    body = data.draw(valid_bodies(schema))
    name = data.draw(st.sampled_from(field_names(schema)))
    check_outcome(spec, route, mutate(body, name, data.draw(json_values())))


@pytest.mark.parametrize("spec, route", ROUTES, ids=IDS)
@settings(max_examples=50, **FAST)
@given(data=st.data())
def test_bodies_built_from_the_published_constraints_validate(spec: ModelSpec, route: Route, data: st.DataObject) -> None:
    schema = schema_of(spec, route)
    body = data.draw(valid_bodies(schema))
    params = check_outcome(spec, route, body)
    assert params is not None, f"rejected a body the published schema allows: {body!r}"
    renamed = dict(route.rename)
    properties = properties_of(schema)
    for name, value in body.items():
        prop = properties[name]
        if prop.get("type") in ("integer", "boolean") or "enum" in prop:
            # Values with one spelling come back as sent (strings like "WxH" may be normalised).
            assert params[renamed.get(name, name)] == value, (name, value, params)


def test_every_route_is_covered() -> None:
    assert len(ROUTES) >= 21
    assert {spec.id for spec, _ in ROUTES} == set(MODELS)
