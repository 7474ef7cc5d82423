"""Qwen-Image engines: text-to-image (``QwenImagePipeline``) and instruction editing
(``QwenImageImg2ImgPipeline``), both on one Qwen-Image checkpoint.

Qwen-Image reads Chinese and English prompts through its Qwen2.5-VL encoder and is not
guidance-distilled: guidance is true classifier-free guidance, a second transformer pass per step
with the negative prompt. ``guidance_scale`` becomes the pipeline's ``true_cfg_scale``. The pipeline
only runs that second pass when it is given a negative prompt, so without one the engine passes
Qwen's documented empty negative prompt (``" "``): guidance > 1 always means real CFG, and 1 means
the conditional branch alone.

``extra["cfg_range_start"]`` / ``extra["cfg_range_end"]`` (fractions of the denoising steps) limit
guidance to the steps whose ``step_index / total_steps`` lies in ``[start, end)``; every other step
costs one forward pass. See :class:`CfgRangeHook` for how.

Editing: ``QwenImageEditPipeline`` cannot load on machines without torchvision (its Qwen2-VL
processor needs it), so ``qwen-image.edit`` is image-to-image on the same weights: the input is
VAE-encoded, noised to ``strength`` and denoised towards the instruction. ``image_guidance_scale``
(1–8, how strongly the output should hold on to the input) picks the strength from
:data:`IMAGE_GUIDANCE_STRENGTH`.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import QwenImageImg2ImgPipeline, QwenImagePipeline
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from imagegate.engines.base import EngineCall
from imagegate.engines.diffusers_base import (
    DiffusersEngine,
    fit_image,
    round_to_multiple,
)
from imagegate.exceptions import InputError

# Qwen's reference settings.
QWEN_STEPS, QWEN_TRUE_CFG = 50, 4.0
EMPTY_NEGATIVE_PROMPT = " "  # Qwen's documented way to enable CFG without a negative prompt
MAX_SEQUENCE_LENGTH = 512
MAX_EDIT_AREA = 1024 * 1024  # edits keep the input's size, capped like the generation sizes

# image_guidance_scale -> img2img strength (the fraction of the schedule re-noised and redrawn).
# Higher image guidance keeps more of the input: 1 (the APIs' default) redraws 80 % of the schedule,
# enough for the instruction to change content; 8 redraws the last 30 %, a retouch. Values between
# the rows are interpolated linearly; the ends clamp.
IMAGE_GUIDANCE_STRENGTH: tuple[tuple[float, float], ...] = (
    (1.0, 0.80),
    (2.0, 0.70),
    (3.0, 0.62),
    (4.0, 0.55),
    (5.0, 0.48),
    (6.0, 0.42),
    (7.0, 0.36),
    (8.0, 0.30),
)
DEFAULT_IMAGE_GUIDANCE = 1.0

CFG_RANGE_HOOK = "imagegate_cfg_range"


def strength_for_image_guidance(image_guidance_scale: float) -> float:
    scales, strengths = zip(*IMAGE_GUIDANCE_STRENGTH)
    return float(np.interp(float(image_guidance_scale), scales, strengths))


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class CfgRangeHook(ModelHook):
    """Runs the unconditional branch only on steps inside the CFG window; elsewhere it answers the
    pipeline's ``"uncond"`` call with the step's conditional prediction, without a forward pass.

    Why a transformer hook: ``QwenImagePipeline.__call__`` decides ``do_true_cfg`` once, in a local
    variable, before the loop, and reads neither ``self._guidance_scale`` nor anything else the
    step callback could change, so a ``callback_on_step_end`` cannot switch guidance per step.
    Overriding the loop would copy ~250 lines of the pipeline. The loop does, however, label its two
    transformer calls with ``cache_context("cond")`` and ``cache_context("uncond")``, which diffusers
    delivers to every stateful hook on the transformer (through the ``StateManager`` below). Given
    an unconditional prediction equal to the conditional one, the pipeline's combination
    ``neg + s * (cond - neg)`` is exactly ``cond`` and its norm rescaling ``cond * |cond| / |cond|``
    is exactly 1, so those steps are bit-identical to running without guidance.

    The hook stays registered for the transformer's lifetime and is inert unless :meth:`configure`
    gave it a window. Engines that share the transformer (text-to-image and edit on one checkpoint)
    share the hook too; their shared call lock serialises calls, and every call reconfigures it with
    its own pipeline.
    """

    _is_stateful = True

    def __init__(self, pipe: Any) -> None:
        super().__init__()
        # The StateManager is how the hook receives the pipeline's cache context (cond / uncond).
        self.state_manager = StateManager(_NoState)
        self._pipe = weakref.ref(pipe)
        self.window: tuple[float, float] | None = None
        self.step_index = -1
        self.skipped_passes = 0
        self._cond_output: Any = None

    def configure(self, window: tuple[float, float] | None, pipe: Any = None) -> None:
        if pipe is not None:
            self._pipe = weakref.ref(pipe)
        self.window = window
        self.step_index = -1
        self.skipped_passes = 0
        self._cond_output = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Pipelines reset stateful hooks when a call ends; the counters stay readable until the
        # next configure().
        self._cond_output = None
        return module

    def _context_name(self) -> str | None:
        try:
            return self.state_manager.context.name
        except ValueError:  # no context: called outside a pipeline loop
            return None

    def _guided(self) -> bool:
        if self.window is None:
            return True
        pipe = self._pipe()
        total = getattr(pipe, "_num_timesteps", None) or 1
        fraction = self.step_index / total
        start, end = self.window
        return start <= fraction < end

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        name = self._context_name()
        if name == "cond":
            self.step_index += 1
            output = self.fn_ref.original_forward(*args, **kwargs)
            self._cond_output = None if self._guided() else output
            return output
        if name == "uncond" and self._cond_output is not None:
            output, self._cond_output = self._cond_output, None
            self.skipped_passes += 1
            return output
        return self.fn_ref.original_forward(*args, **kwargs)


def _cfg_window(call: EngineCall) -> tuple[float, float]:
    try:
        start = float(call.extra.get("cfg_range_start", 0.0))
        end = float(call.extra.get("cfg_range_end", 1.0))
    except (TypeError, ValueError) as exc:
        raise InputError("cfg_range_start", "cfg_range_start and cfg_range_end must be numbers") from exc
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise InputError("cfg_range_start", "cfg_range_start and cfg_range_end must lie in [0, 1]")
    if start > end:
        raise InputError("cfg_range_start", "cfg_range_start must be ≤ cfg_range_end")
    return start, end


class _QwenImageEngine(DiffusersEngine):
    family: ClassVar[str] = "qwen-image"
    opens_cache_contexts = True

    def __init__(self, pipe: Any, **kwargs: Any) -> None:
        super().__init__(pipe, **kwargs)
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        hook = registry.get_hook(CFG_RANGE_HOOK)
        if hook is None:
            hook = CfgRangeHook(pipe)
            registry.register_hook(hook, CFG_RANGE_HOOK)
        self.cfg_hook: CfgRangeHook = hook

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # 8x VAE, then 2x2 patches

    def guidance_kwargs(self, call: EngineCall) -> dict[str, Any]:
        scale = QWEN_TRUE_CFG if call.guidance_scale is None else float(call.guidance_scale)
        start, end = _cfg_window(call)
        if scale <= 1.0 or start >= end:
            # No step is guided: leave the negative branch out entirely rather than skipping it
            # step by step (it also saves encoding the negative prompt).
            self.cfg_hook.configure(None, self.pipe)
            return {"true_cfg_scale": 1.0, "negative_prompt": None}
        self.cfg_hook.configure(None if (start, end) == (0.0, 1.0) else (start, end), self.pipe)
        return {"true_cfg_scale": scale, "negative_prompt": call.negative_prompt or EMPTY_NEGATIVE_PROMPT}

    def common_kwargs(self, call: EngineCall) -> dict[str, Any]:
        return {
            "prompt": call.prompt,
            "num_inference_steps": int(call.num_inference_steps or QWEN_STEPS),
            "max_sequence_length": int(call.extra.get("max_sequence_length") or MAX_SEQUENCE_LENGTH),
            **self.guidance_kwargs(call),
        }

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        guided = kwargs["negative_prompt"] is not None
        info["classifier_free_guidance"] = guided
        if guided:
            info["cfg_range"] = list(self.cfg_hook.window or (0.0, 1.0))
            info["unconditional_passes_skipped"] = self.cfg_hook.skipped_passes
        return info


class QwenImageTextToImage(_QwenImageEngine):
    """``QwenImagePipeline``: bilingual text-to-image with true CFG and an optional CFG window."""

    pipeline_class = QwenImagePipeline
    tasks = frozenset({"text-to-image"})

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        if call.images:
            raise InputError("images", "text-to-image takes no input images")
        multiple = self.size_multiple
        side = self._require_pipe().default_sample_size * self.vae_scale_factor
        return {
            **self.common_kwargs(call),
            "width": round_to_multiple(call.width or side, multiple),
            "height": round_to_multiple(call.height or side, multiple),
        }


class QwenImageEdit(_QwenImageEngine):
    """``QwenImageImg2ImgPipeline``: instruction editing of one image (boogu-image-edit).

    The input is re-noised to a strength chosen by ``extra["image_guidance_scale"]`` through
    :data:`IMAGE_GUIDANCE_STRENGTH` (an explicit ``strength`` wins) and denoised towards the prompt
    with the same true CFG and CFG window as text-to-image. diffusers runs
    ``num_inference_steps * strength`` of the schedule (at least one step). The output keeps the
    input's size (capped at 1 MP) unless width and height are given.
    """

    pipeline_class = QwenImageImg2ImgPipeline
    tasks = frozenset({"edit", "image-to-image"})

    def output_size(self, call: EngineCall, source: Any) -> tuple[int, int]:
        multiple = self.size_multiple
        if call.width and call.height:
            return round_to_multiple(call.width, multiple), round_to_multiple(call.height, multiple)
        width, height = source.size
        if width * height > MAX_EDIT_AREA:
            scale = (MAX_EDIT_AREA / (width * height)) ** 0.5
            width, height = width * scale, height * scale
        return max(multiple, int(width) // multiple * multiple), max(multiple, int(height) // multiple * multiple)

    def strength(self, call: EngineCall) -> float:
        if call.strength is not None:
            strength = float(call.strength)
            if not 0.0 < strength <= 1.0:
                raise InputError("strength", "must be in (0, 1]")
            return strength
        try:
            image_guidance = float(call.extra.get("image_guidance_scale", DEFAULT_IMAGE_GUIDANCE))
        except (TypeError, ValueError) as exc:
            raise InputError("image_guidance_scale", "must be a number") from exc
        if not 1.0 <= image_guidance <= 8.0:
            raise InputError("image_guidance_scale", "must be between 1 and 8")
        return strength_for_image_guidance(image_guidance)

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        if len(call.images) != 1:
            raise InputError("image", f"editing takes exactly one input image, got {len(call.images)}")
        source = call.images[0]
        width, height = self.output_size(call, source)
        return {
            **self.common_kwargs(call),
            "image": fit_image(source, width, height),
            "strength": self.strength(call),
            "width": width,
            "height": height,
        }

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        if "image_guidance_scale" in call.extra and call.strength is None:
            info["image_guidance_scale"] = float(call.extra["image_guidance_scale"])
        return info
