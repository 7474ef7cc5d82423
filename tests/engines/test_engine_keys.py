"""One list of engine keys: the catalog, the engine registry and the fixtures agree on it, and every
catalog model builds calls whose typed options are the ones its engine reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from imagegate.catalog import MODELS, InputKind
from imagegate.engines.base import EngineCall
from imagegate.engines.keys import EngineKey
from imagegate.engines.registry import ENGINE_FACTORIES, resolve_factory
from imagegate.fixtures import BUILDERS, ENGINE_FIXTURES

PNG_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def engine_class(key: EngineKey) -> type:
    return resolve_factory(key).__self__  # every factory is a classmethod "Class.load"


def test_registry_fixtures_and_catalog_use_the_same_keys():
    assert set(ENGINE_FACTORIES) == set(EngineKey) == set(ENGINE_FIXTURES)
    used = {spec.engine_key for spec in MODELS.values()}
    assert all(isinstance(key, EngineKey) for key in used)
    assert used == set(EngineKey)  # no engine without a model, no model without an engine
    for fixture in ENGINE_FIXTURES.values():
        assert fixture in BUILDERS or fixture.startswith("builtin:"), fixture


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_every_model_builds_a_call_its_engine_reads(model_id):
    spec = MODELS[model_id]
    schema = spec.schema
    body = {}
    for name, field in schema.model_fields.items():
        if not field.is_required():
            continue
        if name in spec.inputs:
            body[name] = [PNG_URL] if spec.inputs[name] is InputKind.IMAGES else PNG_URL
        else:
            body[name] = "a red cat"
    params = spec.validate(body)
    params["seed"] = 7
    image = Image.new("RGB", (96, 64), "gray")
    inputs = {
        name: {
            InputKind.IMAGE: image,
            InputKind.IMAGES: [image],
            InputKind.MASK: Image.new("L", image.size, 255),
            InputKind.LORAS: [],
            InputKind.DATASET: [image] * 10,
        }[kind]
        for name, kind in spec.inputs.items()
    }
    call = spec.build_call(params, inputs)
    engine = engine_class(spec.engine_key)
    assert isinstance(call, EngineCall) and call.task in engine.tasks
    assert call.options is None or type(call.options) is engine.options_type
    call.options_as(engine.options_type)  # what the engine does first


def test_each_fixture_holds_the_components_its_engine_loads(tiny_models: Path):
    # An engine may load another pipeline's checkpoint (image-to-image reads FLUX.1's text-to-image
    # weights), so what must agree is the set of components, not the pipeline class.
    for key, fixture in ENGINE_FIXTURES.items():
        if fixture.startswith("builtin:"):
            continue
        index = json.loads((tiny_models.parent / fixture / "model_index.json").read_text())
        pipeline = engine_class(key).pipeline_class
        expected, _ = pipeline._get_signature_keys(pipeline)
        assert set(expected) <= {name for name in index if not name.startswith("_")}, key
