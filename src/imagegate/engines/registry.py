"""Engine keys (:class:`~imagegate.engines.keys.EngineKey`) -> factories. Adding an engine is a member
of ``EngineKey`` and one line in :data:`ENGINE_FACTORIES`.

A factory is ``factory(source, *, device, dtype, model_id=None) -> Engine`` (``model_id`` only names
the model in error messages; factories that do not take it are called without it). Factories that
name ``options`` and ``components`` parameters (every diffusers engine's ``load``) also get the model
manager's :class:`~imagegate.engines.options.EngineOptions` and its shared
:class:`~imagegate.engines.diffusers_base.ComponentCache`. Entries are
``"module:Class.method"`` strings resolved on first use, so importing the registry (the API
process does, to validate the catalog) does not import torch, diffusers or ncnn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from imagegate.engines.keys import EngineKey
from imagegate.exceptions import EngineError

Factory = Callable[..., Any]

ENGINE_FACTORIES: dict[EngineKey, str | Factory] = {
    EngineKey.FLUX1_TEXT_TO_IMAGE: "imagegate.engines.flux1:Flux1TextToImage.load",
    EngineKey.FLUX1_IMAGE_TO_IMAGE: "imagegate.engines.flux1:Flux1ImageToImage.load",
    EngineKey.FLUX1_FILL: "imagegate.engines.flux1:Flux1Fill.load",
    EngineKey.FLUX1_KONTEXT: "imagegate.engines.flux1:Flux1Kontext.load",
    EngineKey.FLUX2_TEXT_TO_IMAGE: "imagegate.engines.flux2:Flux2TextToImage.load",
    EngineKey.FLUX2_EDIT: "imagegate.engines.flux2:Flux2Edit.load",
    EngineKey.FLUX2_RELIGHT: "imagegate.engines.flux2:Flux2Relight.load",
    EngineKey.FLUX2_TRAIN_LORA: "imagegate.engines.lora_trainer:Flux2LoraTrainer.load",
    EngineKey.FLUX2_KLEIN_TEXT_TO_IMAGE: "imagegate.engines.flux2:Flux2KleinTextToImage.load",
    EngineKey.FLUX2_KLEIN_EDIT: "imagegate.engines.flux2:Flux2KleinEdit.load",
    EngineKey.QWEN_IMAGE_TEXT_TO_IMAGE: "imagegate.engines.qwen_image:QwenImageTextToImage.load",
    EngineKey.QWEN_IMAGE_EDIT: "imagegate.engines.qwen_image:QwenImageEdit.load",
    EngineKey.REALESRGAN_UPSCALE: "imagegate.engines.upscaler:RealEsrganUpscaler.load",
}


def resolve_factory(engine_key: EngineKey | str) -> Factory:
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
