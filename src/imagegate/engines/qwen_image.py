"""Qwen-Image engines: text-to-image (``QwenImagePipeline``) and instruction editing
(``QwenImageEditPlusPipeline``, the Qwen-Image-Edit-2509 checkpoints).

Qwen-Image reads Chinese and English prompts through its Qwen2.5-VL encoder and is not
guidance-distilled: guidance is true classifier-free guidance, a second transformer pass per step
with the negative prompt. ``guidance_scale`` becomes the pipeline's ``true_cfg_scale``. The pipeline
only runs that second pass when it is given a negative prompt, so without one the engine passes
Qwen's documented empty negative prompt (``" "``): guidance > 1 always means real CFG, and 1 means
the conditional branch alone.

``QwenImageOptions.cfg_range_start`` / ``cfg_range_end`` (fractions of the denoising steps) limit
guidance to the steps whose ``step_index / total_steps`` lies in ``[start, end)``; every other step
costs one forward pass.

Editing: Qwen-Image-Edit sees the input twice, as vision tokens in the instruction's encoding and as
VAE latents appended to the transformer's sequence. ``QwenImageOptions.image_guidance_scale`` (1–8, "how
closely the output follows the input image") is image guidance in the InstructPix2Pix sense on the
second path: every prediction is pushed ``scale - 1`` times its distance away from the same
prediction made without the reference latents. 1 is the plain pipeline. :class:`GuidanceHook`
implements both controls.

Where torchvision is missing, the edit checkpoint's processor is built without its video half
(:mod:`imagegate.engines.processors`).
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, ClassVar

import torch
from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from imagegate.engines.base import NATIVE_AREA, EngineCall, QwenImageOptions
from imagegate.engines.diffusers_base import DiffusersEngine, round_to_multiple
from imagegate.engines.processors import qwen2vl_processor
from imagegate.exceptions import InputError

# Qwen's reference settings.
QWEN_STEPS, QWEN_TRUE_CFG = 50, 4.0
EMPTY_NEGATIVE_PROMPT = " "  # Qwen's documented way to enable CFG without a negative prompt
MAX_SEQUENCE_LENGTH = 512
MAX_EDIT_AREA = NATIVE_AREA  # edits keep the input's size, capped like the generation sizes

GUIDANCE_HOOK = "imagegate_guidance"


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class GuidanceHook(ModelHook):
    """The two guidance controls the Qwen-Image loops cannot express, on the transformer.

    **CFG window.** Runs the unconditional branch only on steps inside the window; elsewhere it
    answers the pipeline's ``"uncond"`` call with the step's conditional prediction, without a
    forward pass. Why a transformer hook: the pipelines decide ``do_true_cfg`` once, in a local
    variable, before the loop, and read neither ``self._guidance_scale`` nor anything else the step
    callback could change, so a ``callback_on_step_end`` cannot switch guidance per step. Overriding
    the loop would copy ~250 lines of the pipeline. The loop does, however, label its two transformer
    calls with ``cache_context("cond")`` and ``cache_context("uncond")``, which diffusers delivers to
    every stateful hook on the transformer (through the ``StateManager`` below). Given an
    unconditional prediction equal to the conditional one, the pipeline's combination
    ``neg + s * (cond - neg)`` is exactly ``cond`` and its norm rescaling ``cond * |cond| / |cond|``
    is exactly 1, so those steps are bit-identical to running without guidance.

    **Image guidance.** The edit pipeline appends the input's VAE latents to the transformer's
    sequence (``img_shapes`` lists the output first, then each reference). With a scale ``g > 1``
    every transformer call also runs once without the reference tokens, and the output tokens become
    ``pred + (g - 1) * (pred - pred_without_reference)``; the reference tokens pass through (the
    pipeline drops them). Both CFG branches get it, so it composes with true CFG and the window.

    One hook per transformer, registered for its lifetime and inert until :meth:`configure` gives it
    a window or a scale. Engines sharing the transformer share the hook; their shared call lock
    serialises calls, and every call reconfigures it.
    """

    _is_stateful = True

    def __init__(self, pipe: Any) -> None:
        super().__init__()
        # The StateManager is how the hook receives the pipeline's cache context (cond / uncond).
        self.state_manager = StateManager(_NoState)
        self._pipe = weakref.ref(pipe)
        self.window: tuple[float, float] | None = None
        self.image_guidance = 1.0
        self.step_index = -1
        self.skipped_passes = 0
        self.reference_free_passes = 0
        self._cond_output: Any = None

    def configure(self, window: tuple[float, float] | None, pipe: Any = None, *, image_guidance: float = 1.0) -> None:
        if pipe is not None:
            self._pipe = weakref.ref(pipe)
        self.window = window
        self.image_guidance = float(image_guidance)
        self.step_index = -1
        self.skipped_passes = 0
        self.reference_free_passes = 0
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

    def _predict(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        forward = self.fn_ref.original_forward
        output = forward(*args, **kwargs)
        if self.image_guidance == 1.0:
            return output
        named = inspect.signature(forward).bind(*args, **kwargs).arguments
        hidden, shapes = named.get("hidden_states"), named.get("img_shapes")
        if hidden is None or not shapes or len(shapes[0]) < 2:
            return output  # no reference image in this call
        frames, rows, cols = shapes[0][0]
        tokens = frames * rows * cols
        named["hidden_states"] = hidden[:, :tokens]
        named["img_shapes"] = [sample_shapes[:1] for sample_shapes in shapes]
        free = forward(**named)
        self.reference_free_passes += 1
        with_reference = output[0] if isinstance(output, tuple) else output.sample
        without = free[0] if isinstance(free, tuple) else free.sample
        head = with_reference[:, :tokens]
        guided = torch.cat([head + (self.image_guidance - 1.0) * (head - without[:, :tokens]),
                            with_reference[:, tokens:]], dim=1)
        return (guided, *output[1:]) if isinstance(output, tuple) else type(output)(sample=guided)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        name = self._context_name()
        if name == "cond":
            self.step_index += 1
            output = self._predict(args, kwargs)
            self._cond_output = None if self._guided() else output
            return output
        if name == "uncond" and self._cond_output is not None:
            output, self._cond_output = self._cond_output, None
            self.skipped_passes += 1
            return output
        return self._predict(args, kwargs)


class _QwenImageEngine(DiffusersEngine):
    family: ClassVar[str] = "qwen-image"
    options_type = QwenImageOptions
    opens_cache_contexts = True

    def __init__(self, pipe: Any, **kwargs: Any) -> None:
        super().__init__(pipe, **kwargs)
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        hook = registry.get_hook(GUIDANCE_HOOK)
        if hook is None:
            hook = GuidanceHook(pipe)
            registry.register_hook(hook, GUIDANCE_HOOK)
        self.guidance_hook: GuidanceHook = hook

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # 8x VAE, then 2x2 patches

    def image_guidance(self, call: EngineCall) -> float:
        return 1.0

    def guidance_kwargs(self, call: EngineCall) -> dict[str, Any]:
        scale = QWEN_TRUE_CFG if call.guidance_scale is None else float(call.guidance_scale)
        options = call.options_as(QwenImageOptions)
        start, end = options.cfg_range_start, options.cfg_range_end
        image_guidance = self.image_guidance(call)
        if image_guidance != 1.0 and call.acceleration != "none":
            # Cache hooks would see the reference-free pass as the next step of the same branch.
            raise InputError("acceleration", "acceleration cannot be combined with image_guidance_scale above 1")
        if scale <= 1.0 or start >= end:
            # No step is guided: leave the negative branch out entirely rather than skipping it
            # step by step (it also saves encoding the negative prompt).
            self.guidance_hook.configure(None, self.pipe, image_guidance=image_guidance)
            return {"true_cfg_scale": 1.0, "negative_prompt": None}
        window = None if (start, end) == (0.0, 1.0) else (start, end)
        self.guidance_hook.configure(window, self.pipe, image_guidance=image_guidance)
        return {"true_cfg_scale": scale, "negative_prompt": call.negative_prompt or EMPTY_NEGATIVE_PROMPT}

    def common_kwargs(self, call: EngineCall) -> dict[str, Any]:
        return {
            "prompt": call.prompt,
            "num_inference_steps": int(call.num_inference_steps or QWEN_STEPS),
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            **self.guidance_kwargs(call),
        }

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        guided = kwargs["negative_prompt"] is not None
        info["classifier_free_guidance"] = guided
        if guided:
            info["cfg_range"] = list(self.guidance_hook.window or (0.0, 1.0))
            info["unconditional_passes_skipped"] = self.guidance_hook.skipped_passes
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
    """``QwenImageEditPlusPipeline``: instruction editing of one image (boogu-image-edit).

    The instruction is encoded together with the input (at ~384x384 for the vision encoder) and the
    input's latents (at ~1 MP) join the transformer's sequence; the output is drawn from noise at the
    requested size, or the input's size capped at 1 MP. True CFG, the CFG window and image guidance
    (:class:`GuidanceHook`) apply.
    """

    pipeline_class = QwenImageEditPlusPipeline
    tasks = frozenset({"edit"})
    warmup_images = 1

    @classmethod
    def load_components(cls, source: str) -> dict[str, Any]:
        return qwen2vl_processor(source)

    def output_size(self, call: EngineCall, source: Any) -> tuple[int, int]:
        multiple = self.size_multiple
        if call.width and call.height:
            return round_to_multiple(call.width, multiple), round_to_multiple(call.height, multiple)
        width, height = source.size
        if width * height > MAX_EDIT_AREA:
            scale = (MAX_EDIT_AREA / (width * height)) ** 0.5
            width, height = width * scale, height * scale
        return max(multiple, int(width) // multiple * multiple), max(multiple, int(height) // multiple * multiple)

    def image_guidance(self, call: EngineCall) -> float:
        return call.options_as(QwenImageOptions).image_guidance_scale

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        if len(call.images) != 1:
            raise InputError("image", f"editing takes exactly one input image, got {len(call.images)}")
        source = call.images[0].convert("RGB")
        width, height = self.output_size(call, source)
        return {**self.common_kwargs(call), "image": [source], "width": width, "height": height}

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info = super().result_info(call, kwargs)
        info["image_guidance_scale"] = self.guidance_hook.image_guidance
        info["reference_free_passes"] = self.guidance_hook.reference_free_passes
        return info
