"""run() by model id through the server's catalog, live events and their polling fallback, uploads,
and the typed results' agreement with the server's OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
import types
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import httpx
import pytest
from faults.network import TcpRelay
from harness import RunningServer, png_bytes, sample_photo

from imagegate_client import AsyncClient, Client, ModelNotFoundError, ProgressEvent, QueueStatus, RequestFailedError, Status, models

from .support import FAST, KLEIN_BODY, QUICK, SLOW, SUB, RecordingTransport


def test_run_finds_the_models_route_in_the_catalog_once(client: Client, wire: RecordingTransport) -> None:
    first = client.run("flux-dev", FAST, timeout=180)
    second = client.run("flux-dev", FAST, timeout=180)
    assert first.urls and second.urls and first.request_id != second.request_id
    assert len(wire.to("/v2/models")) == 1
    assert [e.status for e in wire.to("/flux-dev/v1/dev/textToImage")] == [202, 202]


def test_the_catalog_is_typed(client: Client) -> None:
    entries = {entry.id: entry for entry in client.models()}
    flux = entries["flux-dev"]
    assert [(r.method, r.path, r.protocol, r.auth_header) for r in flux.routes][0] == ("POST", "/flux-dev/v1/dev/textToImage", "queue", SUB)
    assert flux.price.usd_for_defaults == Decimal("0.025") and flux.price.per_image
    assert "num_inference_steps" in flux.request_schema["properties"]
    i2i = entries["flux-dev-i2i"]
    assert i2i.model_id == "flux-dev" and i2i.inputs == {"image_url": "image"}


def test_models_with_other_protocols_run_to_a_result(client: Client, wire: RecordingTransport) -> None:
    klein = client.run("flux-2-klein-4b", KLEIN_BODY)  # synchronous only
    assert klein.request_id is None and klein.urls
    # flux-1-schnell's batch route answers with an id (under X-Secret-Key); getData is its synchronous one.
    schnell = {"prompt": "a neon city", "num_steps": 1, "width": 256, "height": 256}
    batch = client.run("flux-1-schnell", schnell, timeout=180)
    (sent,) = wire.to("/flux-1-schnell/v1/getDataBatch")
    assert sent.headers.get("x-secret-key") and SUB.lower() not in sent.headers
    assert batch.urls
    direct = client.run("flux-1-schnell", schnell, route="/flux-1-schnell/v1/getData")
    assert direct.urls and wire.to("/flux-1-schnell/v1/getData")


def test_a_dojo_route_is_followed_by_its_job_id(client: Client, wire: RecordingTransport, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(sample_photo(64, 64)))
    body = {"prompt": "make it winter", "image": photo, "image_size": {"width": 64, "height": 64}, "seed": 3}
    handle = client.submit("boogu-image-edit", body, route="/api/v1/models/boogu-image-edit/run")
    assert handle.request_id is not None and handle.request_id.startswith("boogu-image-edit_")
    (sent,) = wire.to("/api/v1/models/boogu-image-edit/run")
    assert sent.headers["authorization"].startswith("Bearer ")
    result = handle.result(timeout=300)
    assert result.request_id == handle.request_id and result.urls and result.seed == 3


def test_a_synchronous_request_that_fails_raises_and_keeps_its_id(client: Client) -> None:
    handle = client.submit("pixelforge-image", {"prompt": "a lamp", "image_urls": ["http://127.0.0.1:9/missing.png"]})
    assert handle.request_id is not None and handle.request_id.startswith("pixelforge-image_")
    with pytest.raises(RequestFailedError) as failed:
        handle.result()
    assert failed.value.state is Status.FAILED and "image_urls" in (failed.value.error or "")
    assert handle.status().status is Status.FAILED


def test_an_unknown_model_or_route_is_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFoundError):
        client.run("no-such-model", FAST)
    with pytest.raises(ModelNotFoundError):
        client.submit("flux-dev", FAST, route="/flux-dev/v1/elsewhere")


def test_events_stream_progress_with_steps_without_polling(client: Client, wire: RecordingTransport) -> None:
    handle = client.submit("flux-dev", SLOW)
    events = list(handle.events(timeout=180))
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and all(e.steps == SLOW["num_inference_steps"] and e.step for e in progress)
    assert isinstance(events[-1], QueueStatus) and events[-1].status is Status.COMPLETED
    assert len(wire.to(f"/v2/requests/{handle.request_id}/events")) == 1
    assert not wire.to(f"/v2/requests/status/{handle.request_id}")


def test_a_cut_event_stream_falls_back_to_polling_and_repeats_nothing(server: RunningServer, api_key: str) -> None:
    """The stream's connection is cut mid-request (it goes silent: no keep-alive arrives); after
    ``stream_timeout`` the client polls, through the retries while new connections are refused."""
    relay = TcpRelay(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    wire = RecordingTransport()
    try:
        with Client(
            f"http://127.0.0.1:{relay.port}", api_key, transport=wire, retries=QUICK, poll_interval=0.2, stream_timeout=3
        ) as client:
            handle = client.submit("flux-dev", SLOW)
            events = handle.events(timeout=180)
            first = next(events)
            relay.cut()  # every connection dropped, new ones refused for a moment
            threading.Timer(0.5, relay.restore).start()
            rest = list(events)
    finally:
        relay.close()
    assert isinstance(first, QueueStatus) and isinstance(rest[-1], QueueStatus) and rest[-1].status is Status.COMPLETED
    statuses = [first.status] + [e.status for e in rest if isinstance(e, QueueStatus)]
    assert len(statuses) == len(set(statuses))
    polls = wire.to(f"/v2/requests/status/{handle.request_id}")
    assert polls and polls[-1].status == 200


def test_local_paths_in_an_input_are_uploaded_once_and_used(client: Client, wire: RecordingTransport, server: RunningServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(sample_photo(64, 64)))
    result = client.run("flux-dev-i2i", {**FAST, "image_url": photo, "strength": 0.5}, timeout=180)
    assert result.urls and [e.status for e in wire.to("/v2/files")] == [201]
    url = client.upload(photo.read_bytes(), filename="again.png")
    assert url.startswith(server.base_url + "/v2/files/")
    assert client.download(result.urls[0])


def test_the_async_twin_runs_by_model_id_with_uploads(server: RunningServer, api_key: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(sample_photo(192, 192)))  # image-to-image works at the input's size

    async def scenario() -> Any:
        async with AsyncClient(server.base_url, api_key, retries=QUICK) as client:
            steps: list[ProgressEvent] = []
            result = await client.subscribe("flux-dev-i2i", {**SLOW, "image_url": photo}, on_progress=steps.append, timeout=180)
            return result, steps, await client.upload(photo)

    result, steps, url = asyncio.run(scenario())
    assert result.urls and steps and steps[-1].steps == SLOW["num_inference_steps"]
    assert url.startswith(server.base_url + "/v2/files/")


# -- the typed results against the server's OpenAPI document ---------------------------------------------

MIRRORS = [
    cls
    for cls in vars(models).values()
    if dataclasses.is_dataclass(cls) and cls.__module__ == models.__name__ and cls is not models.Result
]


def _json_type(annotation: Any) -> tuple[str, bool]:
    """(what the annotation is in JSON Schema terms, whether it may be null)."""
    if get_origin(annotation) in (Union, types.UnionType):
        concrete = [a for a in get_args(annotation) if a is not type(None)]
        kinds = {_json_type(a)[0] for a in concrete}
        return "/".join(sorted(kinds)), type(None) in get_args(annotation)
    origin = get_origin(annotation)
    if origin is list:
        return f"array of {_json_type(get_args(annotation)[0])[0]}", False
    if origin is dict or annotation is dict:
        return "object", False
    if dataclasses.is_dataclass(annotation):
        return f"ref {annotation.__name__}", False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "string", False
    simple = {str: "string", Decimal: "string", datetime: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}
    return simple[annotation], False


def _schema_type(schema: dict[str, Any], schemas: dict[str, Any]) -> tuple[str, bool]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        target = schemas[name]
        # An enum (JobStatus) or a string alias is referenced by name but is a string on the wire.
        return ("string", False) if target.get("type") == "string" else (f"ref {name}", False)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [_schema_type(s, schemas) for s in schema[key]]
            kinds = {k for k, _ in parts if k != "null"}
            nullable = any(k == "null" for k, _ in parts)
            # JSON numbers: int | float is a number.
            return ("number" if kinds == {"integer", "number"} else "/".join(sorted(kinds))), nullable
    kind = schema.get("type")
    if kind is None:
        return ("string" if "enum" in schema or "const" in schema else "any"), False
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}), schemas)[0]}", False
    return kind, False


def test_every_typed_result_matches_the_servers_schema_of_the_same_name(server: RunningServer) -> None:
    schemas = httpx.get(f"{server.base_url}/openapi.json").json()["components"]["schemas"]
    assert len(MIRRORS) >= 12
    for cls in MIRRORS:
        schema = schemas.get(cls.__name__) or schemas.get(f"{cls.__name__}-Output")
        assert schema is not None, f"the server has no schema {cls.__name__}"
        properties = schema["properties"]
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert list(fields) == list(properties), f"{cls.__name__}: {list(fields)} != {list(properties)}"
        required = set(schema.get("required", []))
        for name, f in fields.items():
            ours, theirs = _json_type(hints[name]), _schema_type(properties[name], schemas)
            if ours[0] != "any" and theirs[0] != "any":
                assert ours == theirs, f"{cls.__name__}.{name}: {ours} != {theirs}"
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            assert optional == (name not in required), f"{cls.__name__}.{name}: optional here, not there (or the other way)"
