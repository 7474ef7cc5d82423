"""Engine keys -> factories. Adding an engine is one line in :data:`ENGINE_FACTORIES`.

A factory is ``factory(source, *, device, dtype, model_id=None) -> Engine`` (``model_id`` only names
the model in error messages; factories that do not take it are called without it). Factories that
name ``options`` and ``components`` parameters (every diffusers engine's ``load``) also get the model
manager's :class:`~imagegate.engines.diffusers_base.EngineOptions` and its shared
:class:`~imagegate.engines.diffusers_base.ComponentCache`. Entries are
``"module:Class.method"`` strings resolved on first use, so importing the registry (the API
process does, to validate the catalog) does not import torch, diffusers or ncnn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from imagegate.exceptions import EngineError

Factory = Callable[..., Any]

ENGINE_FACTORIES: dict[str, str | Factory] = {
    "flux1.text-to-image": "imagegate.engines.flux1:Flux1TextToImage.load",
    "flux1.image-to-image": "imagegate.engines.flux1:Flux1ImageToImage.load",
    "flux1.fill": "imagegate.engines.flux1:Flux1Fill.load",
    "flux1.kontext": "imagegate.engines.flux1:Flux1Kontext.load",
    "flux2.text-to-image": "imagegate.engines.flux2:Flux2TextToImage.load",
    "flux2.edit": "imagegate.engines.flux2:Flux2Edit.load",
    "flux2.relight": "imagegate.engines.flux2:Flux2Relight.load",
    "flux2.train-lora": "imagegate.engines.lora_trainer:Flux2LoraTrainer.load",
    "flux2-klein.text-to-image": "imagegate.engines.flux2:Flux2KleinTextToImage.load",
    "flux2-klein.edit": "imagegate.engines.flux2:Flux2KleinEdit.load",
    "qwen-image.text-to-image": "imagegate.engines.qwen_image:QwenImageTextToImage.load",
    "qwen-image.edit": "imagegate.engines.qwen_image:QwenImageEdit.load",
    "realesrgan.upscale": "imagegate.engines.upscaler:RealEsrganUpscaler.load",
}


def resolve_factory(engine_key: str) -> Factory:
    """The callable behind ``engine_key``, importing its module if needed."""
    try:
        entry = ENGINE_FACTORIES[engine_key]
    except KeyError:
        raise EngineError(f"no engine registered for {engine_key!r}") from None
    if not isinstance(entry, str):
        return entry
    module_name, _, qualname = entry.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"engine {engine_key!r} ({entry}) cannot be imported: {exc}") from exc
    return target
