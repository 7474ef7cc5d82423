"""The engine keys: the one list of engines imagegate has.

A catalog model names the engine that serves it (``ModelSpec.engine_key``), the registry maps each key
to its factory (:data:`imagegate.engines.registry.ENGINE_FACTORIES`) and the fixtures map each key to
the tiny checkpoint that stands in for its weights (:data:`imagegate.fixtures.ENGINE_FIXTURES`). All
three use these members, so a key cannot be misspelt in one of them, and a test checks that they agree.
"""

from __future__ import annotations

import enum


class EngineKey(enum.StrEnum):
    FLUX1_TEXT_TO_IMAGE = "flux1.text-to-image"
    FLUX1_IMAGE_TO_IMAGE = "flux1.image-to-image"
    FLUX1_FILL = "flux1.fill"
    FLUX1_KONTEXT = "flux1.kontext"
    FLUX2_TEXT_TO_IMAGE = "flux2.text-to-image"
    FLUX2_EDIT = "flux2.edit"
    FLUX2_RELIGHT = "flux2.relight"
    FLUX2_TRAIN_LORA = "flux2.train-lora"
    FLUX2_KLEIN_TEXT_TO_IMAGE = "flux2-klein.text-to-image"
    FLUX2_KLEIN_EDIT = "flux2-klein.edit"
    QWEN_IMAGE_TEXT_TO_IMAGE = "qwen-image.text-to-image"
    QWEN_IMAGE_EDIT = "qwen-image.edit"
    REALESRGAN_UPSCALE = "realesrgan.upscale"
