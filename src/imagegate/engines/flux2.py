"""FLUX.2 engines: [dev] (``Flux2Pipeline``) and [klein] (``Flux2KleinPipeline``).

FLUX.2 edits natively: reference images are VAE-encoded and appended to the noisy tokens, each
with its own time offset in the rotary positions, so one class serves text-to-image (no
references), single- and multi-reference editing, and relighting. What differs per model:

* [dev] is guidance-distilled (the guidance scale is an embedding, one transformer pass per step)
  and has no negative prompt; a ``negative_prompt`` is ignored.
* [klein] ships step-distilled checkpoints (guidance ignored, few steps) and base checkpoints
  (real classifier-free guidance, a negative prompt, more steps); the checkpoint's
  ``is_distilled`` flag picks the defaults below. ``Flux2Options.turbo`` asks for the short schedule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline, TaylorSeerCacheConfig
from PIL import Image

from imagegate.engines.base import NATIVE_AREA, EngineCall, EngineResult, Flux2Options, StepCallback
from imagegate.engines.diffusers_base import DiffusersEngine, round_to_multiple
from imagegate.engines.processors import pixtral_tokenizer
from imagegate.exceptions import InputError

# Black Forest Labs' reference settings for FLUX.2 [dev].
DEV_STEPS, DEV_GUIDANCE = 50, 4.0
DEV_MAX_REFERENCES = 10  # the most references BFL documents for FLUX.2 editing
MAX_SEQUENCE_LENGTH = 512  # text tokens; both pipelines pad every prompt to this length

# FLUX.2 [klein] default step counts, keyed by (checkpoint is step-distilled, turbo requested).
# Distilled checkpoints are trained for 4 steps (turbo); 8 buys a little detail. Base checkpoints
# are run at 50 by BFL; turbo roughly halves that, to 28, for drafts.
KLEIN_STEPS: dict[tuple[bool, bool], int] = {
    (True, True): 4,
    (True, False): 8,
    (False, True): 28,
    (False, False): 50,
}
KLEIN_BASE_GUIDANCE = 4.0
KLEIN_DISTILLED_GUIDANCE = 1.0  # the distilled pipeline ignores guidance; 1.0 says so in the info
KLEIN_MAX_REFERENCES = 3

# The pipelines' own reference-image rules (Flux2ImageProcessor.check_image_input): checked here so
# a bad upload is the client's InputError rather than an EngineError from inside the pipeline.
MIN_REFERENCE_SIDE = 64
MAX_REFERENCE_ASPECT = 8.0
# References (and outputs sized from them) larger than this are scaled down to it, as the
# pipelines do: token count, and so memory, grows with the area.
MAX_REFERENCE_AREA = NATIVE_AREA

# Relighting is reference editing with an instruction that pins everything but the light.
RELIGHT_PROMPT = (
    "Relight the image: {prompt}. Keep the subject, identity, pose, composition and materials "
    "exactly as they are; change only the lighting."
)
RELIGHT_ACCELERATION = ("none", "regular")

# "regular" acceleration for FLUX.2. The shared level is First Block Cache, which diffusers 0.42
# cannot apply to Flux2Transformer2DModel: its head block is a double-stream block (a tuple of
# text and image states) and its tail a single-stream block (one tensor of the concatenated
# tokens), and the tail hook subtracts the one from the other (TypeError on every step). FLUX.2 gets
# the gentle end of TaylorSeer instead: after 2 computed warm-up steps, every other step is
# forecast to first order from the last two computed ones. That skips close to half of the
# transformer passes (the "high" level, TaylorSeer every 5th step, skips ~80 %) at a small cost.
FLUX2_REGULAR_CACHE_INTERVAL = 2
FLUX2_REGULAR_WARMUP_STEPS = 2


def flux2_regular_cache_config() -> TaylorSeerCacheConfig:
    return TaylorSeerCacheConfig(
        cache_interval=FLUX2_REGULAR_CACHE_INTERVAL,
        disable_cache_before_step=FLUX2_REGULAR_WARMUP_STEPS,
        max_order=1,
        taylor_factors_dtype=torch.float32,
    )


class _Flux2Engine(DiffusersEngine):
    family: ClassVar[str] = "flux2"
    options_type = Flux2Options
    min_references: ClassVar[int] = 0
    max_references: ClassVar[int] = 0

    qkv_fusion = True  # the double-stream blocks' attention (the single-stream one is fused natively)

    def acceleration_config(self, level: str) -> Any | None:
        # First Block Cache cannot run on Flux2Transformer2DModel (see FLUX2_REGULAR_CACHE_INTERVAL);
        # "regular" is the gentle TaylorSeer instead. "none", "high" and validation are shared.
        if level == "regular":
            return flux2_regular_cache_config()
        return super().acceleration_config(level)

    @property
    def size_multiple(self) -> int:
        # Latents are patchified 2x2 after the VAE's 8x, so sizes are multiples of 16.
        return self.vae_scale_factor * 2

    # -- references and sizes

    def references(self, call: EngineCall) -> list[Image.Image]:
        count = len(call.images)
        if not self.min_references <= count <= self.max_references:
            if self.max_references == 0:
                raise InputError("images", f"{call.task} takes no input images")
            raise InputError(
                "images", f"needs {self.min_references} to {self.max_references} reference images, got {count}"
            )
        references = []
        for index, image in enumerate(call.images):
            width, height = image.size
            if min(width, height) < MIN_REFERENCE_SIDE:
                raise InputError(
                    f"images[{index}]", f"is {width}x{height}; both sides must be at least {MIN_REFERENCE_SIDE} px"
                )
            if max(width / height, height / width) > MAX_REFERENCE_ASPECT:
                raise InputError(f"images[{index}]", f"aspect ratio {width}x{height} is more extreme than 8:1")
            references.append(image.convert("RGB"))
        return references

    def _capped(self, width: float, height: float) -> tuple[int, int]:
        if width * height > MAX_REFERENCE_AREA:
            scale = (MAX_REFERENCE_AREA / (width * height)) ** 0.5
            width, height = width * scale, height * scale
        multiple = self.size_multiple
        # Round down so the cap holds, as the pipelines do with references.
        return max(multiple, int(width) // multiple * multiple), max(multiple, int(height) // multiple * multiple)

    def output_size(self, call: EngineCall, references: list[Image.Image]) -> tuple[int, int]:
        """``match_input_image`` > explicit width/height > the first reference's size > 1024²."""
        multiple = self.size_multiple
        first = references[0] if references else None
        if first is not None and call.options_as(Flux2Options).match_input_image:
            return self._capped(*first.size)
        if call.width and call.height:
            return round_to_multiple(call.width, multiple), round_to_multiple(call.height, multiple)
        if first is not None:
            width, height = first.size
            if call.width:  # one side given: keep the reference's aspect ratio
                return round_to_multiple(call.width, multiple), round_to_multiple(
                    int(call.width * height / width), multiple
                )
            if call.height:
                return round_to_multiple(int(call.height * width / height), multiple), round_to_multiple(
                    call.height, multiple
                )
            return self._capped(width, height)
        side = self._require_pipe().default_sample_size * self.vae_scale_factor
        return round_to_multiple(call.width or side, multiple), round_to_multiple(call.height or side, multiple)

    # -- the shared part of __call__'s arguments

    def default_steps(self, call: EngineCall) -> int:
        return DEV_STEPS

    def default_guidance(self) -> float:
        return DEV_GUIDANCE

    def prompt(self, call: EngineCall) -> str:
        return call.prompt

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        references = self.references(call)
        width, height = self.output_size(call, references)
        steps = call.num_inference_steps or self.default_steps(call)
        guidance = self.default_guidance() if call.guidance_scale is None else float(call.guidance_scale)
        return {
            "prompt": self.prompt(call),
            # None, not [], for text-to-image: the pipelines treat any list as "has references".
            "image": references or None,
            "width": width,
            "height": height,
            "num_inference_steps": int(steps),
            "guidance_scale": guidance,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
        }

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        info["width"], info["height"] = kwargs["width"], kwargs["height"]
        if kwargs.get("image"):
            info["references"] = len(kwargs["image"])
        return info


# --------------------------------------------------------------------------- FLUX.2 [dev]


class _Flux2DevEngine(_Flux2Engine):
    pipeline_class = Flux2Pipeline

    @classmethod
    def load_components(cls, source: str) -> dict[str, Any]:
        # The checkpoint's tokenizer is a Pixtral processor (see imagegate.engines.processors).
        return pixtral_tokenizer(source)


class Flux2TextToImage(_Flux2DevEngine):
    """``Flux2Pipeline`` without references: FLUX.2 [dev] text-to-image."""

    tasks = frozenset({"text-to-image"})


class Flux2Edit(_Flux2DevEngine):
    """``Flux2Pipeline`` with ``image=[...]``: FLUX.2 [dev] editing from 1–10 reference images.

    The first image is the one being edited; the others are references the prompt can refer to.
    Output size: the first image's (capped at 1 MP) for ``Flux2Options.match_input_image``, otherwise
    width/height, otherwise the first image's. References condition through attention rather than
    as a noised starting point, so there is no ``strength``; it is ignored for ``image-to-image``.
    """

    tasks = frozenset({"edit", "image-to-image"})
    min_references = 1
    max_references = DEV_MAX_REFERENCES
    warmup_images = 1


class Flux2Relight(Flux2Edit):
    """FLUX.2 [dev] relighting: reference editing (1–10 images, the first is relit) with a lighting
    instruction, optional LoRAs (a relighting LoRA is the usual companion), and ``none`` or
    ``regular`` acceleration.

    The prompt is wrapped in :data:`RELIGHT_PROMPT`, which pins everything except the light; the
    lighting description itself is the client's prompt.
    """

    tasks = frozenset({"edit"})

    def prompt(self, call: EngineCall) -> str:
        lighting = call.prompt.strip().rstrip(".")
        if not lighting:
            raise InputError("prompt", "relighting needs a description of the lighting")
        return RELIGHT_PROMPT.format(prompt=lighting)

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        # TaylorSeer's forecasting ("high") visibly shifts shading, the one thing relighting is about.
        if call.acceleration not in RELIGHT_ACCELERATION:
            raise InputError("acceleration", f"relighting supports {' or '.join(RELIGHT_ACCELERATION)}")
        for index, lora in enumerate(call.loras):
            self._check_adapter(f"loras[{index}].path", lora.path)
        return super().__call__(call, on_step)

    def _check_adapter(self, field: str, path: str) -> None:
        # diffusers loads a LoRA with nothing for this transformer as no adapter at all (it only
        # warns) and fails later, activating it: the file's fault, so say so before the run.
        try:
            state = self.pipeline_class.lora_state_dict(path)
        except (ValueError, KeyError, OSError) as exc:
            raise InputError(field, f"cannot be read as a FLUX.2 LoRA: {exc}") from exc
        prefix = f"{self.pipeline_class.transformer_name}."
        if not any(key.startswith(prefix) for key in state):
            raise InputError(field, "holds no adapter weights for this model's transformer (a LoRA for another model?)")


# --------------------------------------------------------------------------- FLUX.2 [klein]


class _Flux2KleinEngine(_Flux2Engine):
    pipeline_class = Flux2KleinPipeline
    opens_cache_contexts = True  # the loop opens "cond" and "uncond" contexts

    @property
    def distilled(self) -> bool:
        return bool(self._require_pipe().config.get("is_distilled", False))

    @property
    def step_distilled(self) -> bool:
        return self.distilled

    def default_steps(self, call: EngineCall) -> int:
        return KLEIN_STEPS[(self.distilled, call.options_as(Flux2Options).turbo)]

    def default_guidance(self) -> float:
        return KLEIN_DISTILLED_GUIDANCE if self.distilled else KLEIN_BASE_GUIDANCE

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        kwargs = super().pipeline_kwargs(call)
        if call.negative_prompt and not self.distilled and kwargs["guidance_scale"] > 1.0:
            # The pipeline's unconditional branch always encodes "" unless it is handed embeddings,
            # so the negative prompt is encoded here, once (the pipeline repeats it per image).
            pipe = self._require_pipe()
            negative_embeds, _ = pipe.encode_prompt(
                prompt=call.negative_prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                max_sequence_length=kwargs["max_sequence_length"],
            )
            kwargs["negative_prompt_embeds"] = negative_embeds
        return kwargs

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        info["turbo"] = call.options_as(Flux2Options).turbo
        info["classifier_free_guidance"] = not self.distilled and kwargs["guidance_scale"] > 1.0
        if kwargs.get("negative_prompt_embeds") is not None:
            info["negative_prompt"] = True
        return info


class Flux2KleinTextToImage(_Flux2KleinEngine):
    """``Flux2KleinPipeline`` without references: FLUX.2 [klein] text-to-image."""

    tasks = frozenset({"text-to-image"})


class Flux2KleinEdit(_Flux2KleinEngine):
    """``Flux2KleinPipeline`` with 1–3 reference images: FLUX.2 [klein] multi-reference editing."""

    tasks = frozenset({"edit", "image-to-image"})
    min_references = 1
    max_references = KLEIN_MAX_REFERENCES
    warmup_images = 1
