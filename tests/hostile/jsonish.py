"""Hypothesis strategies: arbitrary JSON-ish values, and valid bodies built from a request
schema's published constraints (its JSON Schema: types, enums, ranges, lengths, item counts).

Where JSON Schema cannot say what a valid value is, the strategy follows the documented rule
instead: URLs are real http(s) or data: URLs, prompts have a non-blank character, webhooks are
https URLs, ``"WxH"`` sizes are two integers. Nothing here calls the validators it feeds.
"""

from __future__ import annotations

import base64
import functools
import math
from typing import Any

from hypothesis import strategies as st

from imagegate.catalog.base import RequestSchema

# Strings a validator might special-case: URL schemes, presets, enum-like words, numbers in text.
INTERESTING_STRINGS = [
    "",
    " ",
    "\t\n",
    "\x00",
    "\ud800",
    "\udfff",
    "a\ud83dz",
    "0",
    "-1",
    "1e999",
    "NaN",
    "Infinity",
    "true",
    "null",
    "data:",
    "data:,",
    "data:image/png;base64,",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://",
    "https://",
    "http:///x",
    "https://a.test/x.png",
    "https://a.test:0/x",
    "https://a.test:99999/x",
    "http://[::1",
    "http://[::1]/x",
    "http://127.0.0.1/x",
    "http://169.254.169.254/latest/meta-data/",
    "HTTP://A.TEST/X.PNG",
    "ftp://a.test/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "//a.test/x.png",
    "https://a.test/\r\nX: y",
    "square_hd",
    "square_1_1",
    "landscape_4_3",
    "auto",
    "1024x1024",
    "0x0",
    "64x99999999999999999999",
    "1_024x1024",
    "match_input_image",
    "16:9",
    "0:0",
    "1",
    "2",
    "6",
    "7",
    "jpeg",
    "jpg",
    "png",
    "webp",
    "gif",
    "target",
    "factor",
    "none",
    "regular",
    "high",
    "*",
    "completed",
    "x" * 801,
    "x" * 10_001,
]

JSON_INTEGERS = st.one_of(
    st.integers(min_value=-10, max_value=5000),
    st.integers(),
    st.sampled_from([0, -1, 1, 16, 64, 512, 1024, 1448, 2048, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**70, -(2**70), 10**40]),
)
JSON_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 1e-7, 1e-308, 5e-324, 1e308, -1e308, float("inf"), float("-inf")]),
)
JSON_TEXT = st.one_of(st.text(st.characters(), max_size=40), st.sampled_from(INTERESTING_STRINGS))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), JSON_INTEGERS, JSON_FLOATS, JSON_TEXT)


@functools.cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Anything json.loads can return (and inf/NaN, which 1e999 and friends produce)."""
    return st.recursive(
        JSON_SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.one_of(JSON_TEXT, st.sampled_from(["width", "height", "path", "scale"])), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


@functools.cache
def field_names(schema: type[RequestSchema]) -> list[str]:
    names = []
    for name, info in schema.model_fields.items():
        names.append(name)
        if info.alias:
            names.append(info.alias)
    return names


@functools.cache
def field_dicts(schema: type[RequestSchema]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects keyed by the schema's own field names (plus a few strangers), any JSON values."""
    names = field_names(schema)
    keys = st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper), JSON_TEXT)
    return st.dictionaries(keys, json_values(), max_size=len(names) + 3)


# -- valid values from the published schema ----------------------------------------------------------

URL_PATTERN_PREFIX = "^(?:[Hh][Tt][Tt][Pp][Ss]?://"

_HOSTS = st.one_of(
    st.sampled_from(["a.test", "images.example.com", "cdn.example.org:8443", "127.0.0.1", "[::1]", "xn--bcher-kva.example"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True),
)
_PATHS = st.from_regex(r"(/[A-Za-z0-9._~%-]{0,12}){0,4}(\?[a-z]{1,5}=[A-Za-z0-9]{0,8})?", fullmatch=True)
_BASE64 = st.binary(min_size=1, max_size=60).map(lambda b: base64.b64encode(b).decode())

HTTP_URLS = st.builds(lambda scheme, host, path: f"{scheme}://{host}{path}", st.sampled_from(["http", "https", "HTTPS"]), _HOSTS, _PATHS)
HTTPS_URLS = st.builds(lambda host, path: f"https://{host}{path}", _HOSTS, _PATHS)
DATA_URLS = st.one_of(
    st.builds(lambda mime, payload: f"data:{mime};base64,{payload}", st.sampled_from(["image/png", "image/jpeg", "image/webp", ""]), _BASE64),
    st.just("data:,hello"),
)
IMAGE_URLS = st.one_of(HTTP_URLS, DATA_URLS)

_VISIBLE = st.characters(exclude_categories=("Cs",))


def _text(min_visible: bool, max_length: int | None) -> st.SearchStrategy[str]:
    limit = max_length if max_length is not None else 10_000
    body = st.text(_VISIBLE, max_size=min(limit, 120))
    if min_visible:
        body = body.filter(lambda s: bool(s.strip()))
    extremes = [s for s in ["x" * limit, "é" * limit] if len(s) <= limit]
    return st.one_of(body, st.sampled_from(extremes)) if extremes else body


def _wxh() -> st.SearchStrategy[str]:
    side = st.integers(64, 2048)
    return st.one_of(st.just("auto"), st.builds(lambda w, h, x: f"{w}{x}{h}", side, side, st.sampled_from(["x", "X"])))


def value_for(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in prop:
        return value_for(name, defs[prop["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in prop:
        return st.one_of([value_for(name, option, defs) for option in prop["anyOf"]])
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    kind = prop.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo, hi, step = prop.get("minimum"), prop.get("maximum"), prop.get("multipleOf")
        if step:
            return st.integers(math.ceil(lo / step), hi // step).map(lambda k: k * step)
        return st.integers(lo, hi)
    if kind == "number":
        lo, hi = prop.get("minimum"), prop.get("maximum")
        floats = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
        ints = st.integers(math.ceil(lo), math.floor(hi)) if lo is not None and hi is not None and math.ceil(lo) <= math.floor(hi) else st.nothing()
        return st.one_of(floats, ints)
    if kind == "array":
        items = value_for(name, prop["items"], defs)
        return st.lists(items, min_size=prop.get("minItems", 0), max_size=min(prop.get("maxItems", 5), 5))
    if kind == "object":
        required = set(prop.get("required", []))
        props = prop.get("properties", {})
        return st.fixed_dictionaries(
            {k: value_for(k, v, defs) for k, v in props.items() if k in required},
            optional={k: value_for(k, v, defs) for k, v in props.items() if k not in required},
        )
    if kind == "string":
        pattern = prop.get("pattern", "")
        if pattern.startswith(URL_PATTERN_PREFIX):
            return IMAGE_URLS
        if name in ("webhook", "webhook_url"):
            return HTTPS_URLS
        if name == "image_size":
            return _wxh()
        return _text(pattern == r"\S", prop.get("maxLength"))
    raise AssertionError(f"{name}: no strategy for {prop}")


@functools.cache
def valid_bodies(schema: type[RequestSchema]) -> st.SearchStrategy[dict[str, Any]]:
    js = schema.model_json_schema()
    defs = js.get("$defs", {})
    required = set(js.get("required", []))
    props = js["properties"]
    body = st.fixed_dictionaries(
        {name: value_for(name, prop, defs) for name, prop in props.items() if name in required},
        optional={name: value_for(name, prop, defs) for name, prop in props.items() if name not in required},
    )
    return body.map(_documented_cross_field_rules)


def _documented_cross_field_rules(body: dict[str, Any]) -> dict[str, Any]:
    # Boogu's cfg range is a range: start ≤ end (row 1 of the inventory).
    start, end = body.get("cfg_range_start"), body.get("cfg_range_end")
    if start is not None and end is not None and start > end:
        body["cfg_range_start"], body["cfg_range_end"] = end, start
    return body
