"""ModelManager: warm engines keyed by (engine_key, source), LRU eviction under a byte budget."""

from __future__ import annotations

import threading
import time

import pytest

from imagegate.engines import registry
from imagegate.engines.base import EngineCall
from imagegate.engines.flux1 import Flux1ImageToImage, Flux1Kontext, Flux1TextToImage
from imagegate.engines.manager import ModelManager
from imagegate.exceptions import EngineError, WeightsNotFoundError


def test_registry_lists_flux1_engines_and_resolves_them():
    assert registry.resolve_factory("flux1.text-to-image") == Flux1TextToImage.load
    assert registry.resolve_factory("flux1.image-to-image") == Flux1ImageToImage.load
    assert registry.resolve_factory("flux1.kontext") == Flux1Kontext.load
    assert callable(registry.resolve_factory("flux1.fill"))
    with pytest.raises(EngineError, match="no engine registered"):
        registry.resolve_factory("nope.none")


def test_get_loads_once_and_keeps_warm(flux1_dirs):
    manager = ModelManager("cpu", "auto")
    source = str(flux1_dirs["t2i"])
    engine = manager.get("tiny-flux1", "flux1.text-to-image", source)
    assert manager.get("tiny-flux1", "flux1.text-to-image", source) is engine
    img2img = manager.get("tiny-flux1", "flux1.image-to-image", source)
    assert isinstance(img2img, Flux1ImageToImage)
    assert [(l.engine_key, l.model_id) for l in manager.loaded()] == [
        ("flux1.text-to-image", "tiny-flux1"),
        ("flux1.image-to-image", "tiny-flux1"),
    ]
    # Both engines run on one copy of the weights, and the budget counts it once.
    assert img2img.pipe.transformer is engine.pipe.transformer
    assert manager.used_bytes == engine.memory_bytes == img2img.memory_bytes
    image = engine(EngineCall(task="text-to-image", prompt="cat", width=64, height=64, num_inference_steps=1),
                   lambda step, total: None).images[0]
    assert image.size == (64, 64)


def test_lru_eviction_under_a_tiny_budget(flux1_dirs):
    source, schnell, kontext = str(flux1_dirs["t2i"]), str(flux1_dirs["schnell"]), str(flux1_dirs["kontext"])
    probe = Flux1TextToImage.load(source, device="cpu", dtype="float32")
    size = probe.memory_bytes
    probe.unload()

    manager = ModelManager("cpu", "float32", memory_budget_bytes=int(size * 2.5))
    a = manager.get("a", "flux1.text-to-image", source)
    b = manager.get("b", "flux1.image-to-image", schnell)  # other weights: nothing shared
    manager.get("a", "flux1.text-to-image", source)  # a is now the most recently used
    c = manager.get("c", "flux1.kontext", kontext)
    assert [l.model_id for l in manager.loaded()] == ["a", "c"]
    assert b.memory_bytes == 0 and b.pipe is None  # evicted engines are unloaded
    assert a.memory_bytes > 0 and c.memory_bytes > 0
    assert manager.used_bytes <= manager.memory_budget_bytes

    # A budget smaller than one model still serves it, alone. (Here the second engine shares the
    # first one's weights; evicting the first frees nothing, but it is still the one that goes.)
    small = ModelManager("cpu", "float32", memory_budget_bytes=1)
    first = small.get("a", "flux1.text-to-image", source)
    second = small.get("b", "flux1.image-to-image", source)
    assert [l.model_id for l in small.loaded()] == ["b"]
    assert first.pipe is None and second.pipe is not None
    # Reloading after eviction gives a fresh, working engine.
    again = small.get("a", "flux1.text-to-image", source)
    assert again is not first and again.memory_bytes == size


def test_concurrent_gets_load_once(flux1_dirs, monkeypatch):
    loads = []

    def counting_load(source, *, device, dtype, model_id=None):
        loads.append(model_id)
        time.sleep(0.2)  # widen the window in which a second loader would start
        return Flux1TextToImage.load(source, device=device, dtype=dtype, model_id=model_id)

    monkeypatch.setitem(registry.ENGINE_FACTORIES, "test.counting", counting_load)
    manager = ModelManager("cpu", "auto")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(manager.get("m", "test.counting", str(flux1_dirs["t2i"]))))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["m"]
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_factories_without_model_id_and_missing_weights(flux1_dirs, monkeypatch, tmp_path):
    def plain_load(source, *, device, dtype):
        return Flux1TextToImage.load(source, device=device, dtype=dtype)

    monkeypatch.setitem(registry.ENGINE_FACTORIES, "test.plain", plain_load)
    manager = ModelManager("cpu", "auto")
    assert manager.get("m", "test.plain", str(flux1_dirs["t2i"])).model_id is None
    with pytest.raises(WeightsNotFoundError, match="weights for flux-dev not found"):
        manager.get("flux-dev", "flux1.text-to-image", str(tmp_path / "missing"))
    assert [l.engine_key for l in manager.loaded()] == ["test.plain"]
    manager.unload_all()
    assert manager.loaded() == [] and manager.used_bytes == 0
