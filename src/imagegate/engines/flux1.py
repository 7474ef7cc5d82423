"""FLUX.1 engines: one class per diffusers pipeline.

Schnell and dev share the text-to-image and image-to-image classes; they differ only in weights,
and the defaults below follow the weights (a transformer without a guidance embedding is
timestep-distilled schnell: 4 steps, no guidance, 256 T5 tokens). Fill and Kontext have their own
pipelines and defaults (Black Forest Labs' published settings).
"""

from __future__ import annotations

from typing import Any, ClassVar

from diffusers import (
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
)
from PIL import Image

from imagegate.engines.base import NATIVE_AREA, RESTORE_PROMPT, EngineCall, EngineResult, Flux1Options, StepCallback
from imagegate.engines.diffusers_base import (
    DiffusersEngine,
    fit_image,
    fit_mask,
    round_to_multiple,
)
from imagegate.exceptions import InputError

# Black Forest Labs' reference settings.
DEV_STEPS, DEV_GUIDANCE, DEV_MAX_SEQUENCE_LENGTH = 28, 3.5, 512
SCHNELL_STEPS, SCHNELL_GUIDANCE, SCHNELL_MAX_SEQUENCE_LENGTH = 4, 0.0, 256
IMG2IMG_STRENGTH = 0.6  # FluxImg2ImgPipeline's own default
FILL_STEPS, FILL_GUIDANCE = 50, 30.0
KONTEXT_STEPS, KONTEXT_GUIDANCE = 28, 2.5
# Kontext was trained around the native area; an unbounded input size would make the reference and
# output token counts (and memory) grow with whatever was uploaded.
KONTEXT_MAX_AREA = NATIVE_AREA


class _Flux1Engine(DiffusersEngine):
    family: ClassVar[str] = "flux1"
    options_type = Flux1Options
    qkv_fusion = True
    default_steps: ClassVar[int | None] = None  # None: follow the weights (dev or schnell)
    default_guidance: ClassVar[float | None] = None

    @property
    def guidance_distilled(self) -> bool:
        return bool(self._require_pipe().transformer.config.guidance_embeds)

    @property
    def step_distilled(self) -> bool:
        # Without a guidance embedding the weights are timestep-distilled schnell (4 steps).
        return not self.guidance_distilled

    @property
    def size_multiple(self) -> int:
        # Latents are packed 2x2, so pixel sizes must be multiples of twice the VAE factor.
        return self.vae_scale_factor * 2

    def common_kwargs(self, call: EngineCall) -> dict[str, Any]:
        distilled = self.guidance_distilled
        steps = call.num_inference_steps or self.default_steps or (DEV_STEPS if distilled else SCHNELL_STEPS)
        guidance = call.guidance_scale
        if guidance is None:
            guidance = self.default_guidance if self.default_guidance is not None else (
                DEV_GUIDANCE if distilled else SCHNELL_GUIDANCE
            )
        kwargs: dict[str, Any] = {
            "prompt": call.prompt,
            "num_inference_steps": int(steps),
            "guidance_scale": float(guidance),
            "max_sequence_length": DEV_MAX_SEQUENCE_LENGTH if distilled else SCHNELL_MAX_SEQUENCE_LENGTH,
        }
        true_cfg = call.options_as(Flux1Options).true_cfg_scale
        if call.negative_prompt and true_cfg is not None:
            kwargs["negative_prompt"] = call.negative_prompt
            kwargs["true_cfg_scale"] = float(true_cfg)
        return kwargs

    def output_size(self, call: EngineCall, reference: Image.Image | None = None) -> tuple[int, int]:
        multiple = self.size_multiple
        if call.width and call.height:
            return round_to_multiple(call.width, multiple), round_to_multiple(call.height, multiple)
        if reference is not None:
            width, height = reference.size
            if call.width:  # one side given: keep the reference's aspect ratio
                width, height = call.width, call.width * height / width
            elif call.height:
                width, height = call.height * width / height, call.height
            return round_to_multiple(int(width), multiple), round_to_multiple(int(height), multiple)
        side = self._require_pipe().default_sample_size * self.vae_scale_factor
        return round_to_multiple(call.width or side, multiple), round_to_multiple(call.height or side, multiple)

    def main_image(self, call: EngineCall) -> Image.Image:
        if not call.images:
            raise InputError("image", f"{call.task} needs an input image")
        return call.images[0]


class Flux1TextToImage(_Flux1Engine):
    """``FluxPipeline``: FLUX.1 [dev] / [schnell] text-to-image."""

    pipeline_class = FluxPipeline
    tasks = frozenset({"text-to-image"})
    opens_cache_contexts = True

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        width, height = self.output_size(call)
        return {**self.common_kwargs(call), "width": width, "height": height}


class Flux1ImageToImage(_Flux1Engine):
    """``FluxImg2ImgPipeline``: noise the input to ``strength`` and denoise it towards the prompt."""

    pipeline_class = FluxImg2ImgPipeline
    tasks = frozenset({"image-to-image"})
    warmup_images = 1

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        source = self.main_image(call)
        width, height = self.output_size(call, source)
        strength = IMG2IMG_STRENGTH if call.strength is None else float(call.strength)
        return {
            **self.common_kwargs(call),
            "image": fit_image(source, width, height),
            "strength": strength,
            "width": width,
            "height": height,
        }


class Flux1Fill(_Flux1Engine):
    """``FluxFillPipeline``: FLUX.1 Fill [dev] inpainting; white mask pixels are repainted.

    By default the input's unmasked pixels are pasted back over the result (the mask as alpha):
    the VAE round trip otherwise shifts colours and softens detail everywhere, not just in the hole.
    ``Flux1Options(preserve_unmasked=False)`` returns the raw pipeline output.
    """

    pipeline_class = FluxFillPipeline
    tasks = frozenset({"inpaint"})
    warmup_images = 1
    default_steps = FILL_STEPS
    default_guidance = FILL_GUIDANCE

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        source = self.main_image(call)
        if call.mask is None:
            raise InputError("mask", "inpaint needs a mask (white = area to fill)")
        width, height = self.output_size(call, source)
        kwargs = {
            **self.common_kwargs(call),
            "image": fit_image(source, width, height),
            "mask_image": fit_mask(call.mask, width, height),
            "width": width,
            "height": height,
        }
        if call.strength is not None:
            kwargs["strength"] = float(call.strength)
        return kwargs

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        result = super().__call__(call, on_step)
        if call.options_as(Flux1Options).preserve_unmasked:
            source = self.main_image(call)
            width, height = result.images[0].size
            original = fit_image(source, width, height)
            mask = fit_mask(call.mask, width, height)  # type: ignore[arg-type]
            result.images = [Image.composite(image.convert("RGB"), original, mask) for image in result.images]
            result.info["preserve_unmasked"] = True
        return result


class Flux1Kontext(_Flux1Engine):
    """``FluxKontextPipeline``: FLUX.1 Kontext [dev] instruction editing of one reference image.

    The output keeps the input's size (rounded to multiples of 16, capped at about one megapixel)
    unless width/height are given. The pipeline's own snapping to its preferred resolutions is
    turned off (``_auto_resize=False``) and ``max_area`` is set to the output area, so any size,
    small ones included, is honoured.
    """

    pipeline_class = FluxKontextPipeline
    tasks = frozenset({"edit", "restore"})
    warmup_images = 1
    default_steps = KONTEXT_STEPS
    default_guidance = KONTEXT_GUIDANCE

    def output_size(self, call: EngineCall, reference: Image.Image | None = None) -> tuple[int, int]:
        if reference is not None and not (call.width or call.height):
            width, height = reference.size
            if width * height > KONTEXT_MAX_AREA:
                scale = (KONTEXT_MAX_AREA / (width * height)) ** 0.5
                width, height = width * scale, height * scale
            multiple = self.size_multiple
            # Round down after capping so the cap is never exceeded.
            return (
                max(multiple, int(width) // multiple * multiple),
                max(multiple, int(height) // multiple * multiple),
            )
        return super().output_size(call, reference)

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        if len(call.images) > 1:
            raise InputError("images", "FLUX.1 Kontext takes exactly one reference image")
        source = self.main_image(call)
        width, height = self.output_size(call, source)
        kwargs = self.common_kwargs(call)
        if call.task == "restore" and not call.prompt.strip():
            kwargs["prompt"] = RESTORE_PROMPT
        # The reference is encoded at the output's area with its own aspect ratio, so a differently
        # shaped output does not stretch it.
        ref_w, ref_h = source.size
        scale = ((width * height) / (ref_w * ref_h)) ** 0.5
        multiple = self.size_multiple
        reference = fit_image(
            source,
            round_to_multiple(int(ref_w * scale), multiple),
            round_to_multiple(int(ref_h * scale), multiple),
        )
        return {
            **kwargs,
            "image": reference,
            "width": width,
            "height": height,
            "max_area": width * height,
            "_auto_resize": False,
        }

