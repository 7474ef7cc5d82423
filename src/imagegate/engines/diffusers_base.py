"""Shared machinery for every engine built on a diffusers pipeline.

A family module (``flux1``, ``flux2``, ``qwen_image``, ...) subclasses :class:`DiffusersEngine`, names
its ``pipeline_class`` and ``tasks``, and turns an :class:`EngineCall` into the pipeline's ``__call__``
keyword arguments in :meth:`DiffusersEngine.pipeline_kwargs`. Everything that is the same for all of
them lives here: loading with ``from_pretrained`` (and the error an operator sees when weights are
missing), device and dtype resolution, seeded generators, step reporting and cancellation,
batched ``num_images``, acceleration through diffusers' cache hooks, per-call LoRAs, and turning
pipeline failures (OOM included) into :class:`EngineError`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import torch
from PIL import Image

from imagegate.engines.base import EngineCall, EngineResult, LoraSpec, StepCallback
from imagegate.exceptions import EngineError, InputError, JobCanceledError, WeightsNotFoundError

__all__ = [
    "ACCELERATION_LEVELS",
    "REGULAR_FBC_THRESHOLD",
    "HIGH_TAYLORSEER_CACHE_INTERVAL",
    "HIGH_TAYLORSEER_WARMUP_STEPS",
    "HIGH_TAYLORSEER_MAX_ORDER",
    "DiffusersEngine",
    "acceleration_config",
    "accelerated",
    "apply_loras",
    "remove_loras",
    "loras_applied",
    "lora_adapter_name",
    "load_pipeline",
    "make_generator",
    "module_bytes",
    "pipeline_memory_bytes",
    "resolve_device",
    "resolve_dtype",
    "resolve_device_dtype",
    "fit_image",
    "is_out_of_memory",
    "release_memory",
    "fit_mask",
    "round_to_multiple",
    "weights_not_found_message",
]

ACCELERATION_LEVELS = ("none", "regular", "high")

# "regular": First Block Cache (ParaAttention's dynamic caching) at diffusers' default threshold,
# 0.05. It only skips a step's remaining blocks when the first block's residual moved by less than
# 5 % (relative absmean) since the last computed step, so the quality cost is small and the
# speed-up adapts to how smooth the trajectory is.
REGULAR_FBC_THRESHOLD = 0.05

# "high": TaylorSeer (arXiv 2503.06923), the configuration diffusers documents for FLUX. Unlike First
# Block Cache it does not wait for the trajectory to become smooth: after a short warm-up it
# forecasts block outputs with a first-order Taylor expansion and only recomputes every
# ``cache_interval`` steps, which is the bigger (and lossier) saving. The warm-up is kept at 2 steps
# (documented default 3) so short schedules such as schnell's 4 steps still get some benefit.
HIGH_TAYLORSEER_CACHE_INTERVAL = 5
HIGH_TAYLORSEER_WARMUP_STEPS = 2
HIGH_TAYLORSEER_MAX_ORDER = 1

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when present, otherwise the CPU; anything else is taken as given."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (what FLUX-class weights are trained in) and float32 elsewhere,
    because bfloat16 matmuls on most CPUs are emulated and slower than float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise EngineError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def resolve_device_dtype(device: str = "auto", dtype: str | torch.dtype = "auto") -> tuple[str, torch.dtype]:
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)


# --------------------------------------------------------------------------- loading


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "org/name"; anything with a path prefix, more than one slash, or an OS
    # separator that is not "/" can only be meant as a directory.
    if source.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in source):
        return True
    return source.count("/") > 1


def weights_not_found_message(source: str, model_id: str | None = None, reason: str | None = None) -> str:
    name = model_id or source
    pull = f"imagegate weights pull {model_id}" if model_id else f"hf download {source}"
    table = f"[models.{model_id}]" if model_id else "[models.<model-id>]"
    where = reason or (
        f"{source!r} is not a local directory"
        if _looks_like_path(source)
        else f"{source!r} is not a local directory and is not in the Hugging Face cache"
    )
    return (
        f"weights for {name} not found: {where}; run `{pull}` on a machine with network access "
        f'or set {table} weights = "/path/to/dir" in the config'
    )


def load_pipeline(
    pipeline_class: type,
    source: str,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    model_id: str | None = None,
    **from_pretrained_kwargs: Any,
) -> Any:
    """``pipeline_class.from_pretrained(source, dtype=...)`` moved to the resolved device.

    Missing weights (no such directory, a hub id absent from the cache while offline, an unknown
    repository) raise :class:`WeightsNotFoundError`; weights that exist but do not load raise
    :class:`EngineError`.
    """
    resolved_device, torch_dtype = resolve_device_dtype(device, dtype)
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        source = expanded
    elif _looks_like_path(source) or os.path.exists(expanded):
        reason = f"{source!r} is not a directory" if os.path.exists(expanded) else None
        raise WeightsNotFoundError(weights_not_found_message(source, model_id, reason))
    is_local = os.path.isdir(source)
    try:
        # diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (same meaning; the old name warns).
        pipe = pipeline_class.from_pretrained(source, dtype=torch_dtype, **from_pretrained_kwargs)
    except OSError as exc:
        # huggingface_hub's LocalEntryNotFoundError, RepositoryNotFoundError, GatedRepoError,
        # RevisionNotFoundError and OfflineModeIsEnabled are all OSErrors, and so is diffusers'
        # "does not appear to have a file named ..." for an incomplete local folder.
        reason = f"{source!r} is not a complete diffusers checkpoint ({exc})" if is_local else None
        raise WeightsNotFoundError(weights_not_found_message(source, model_id, reason)) from exc
    except Exception as exc:
        # huggingface_hub rejects a malformed repo id with HFValidationError (a ValueError).
        if not is_local and type(exc).__name__ == "HFValidationError":
            raise WeightsNotFoundError(weights_not_found_message(source, model_id)) from exc
        raise EngineError(f"{model_id or source}: cannot load {pipeline_class.__name__}: {exc}") from exc
    try:
        pipe.to(resolved_device)
    except torch.OutOfMemoryError as exc:
        del pipe
        _release_memory()
        raise EngineError(f"{model_id or source}: out of memory moving weights to {resolved_device}") from exc
    # The server owns progress reporting; tqdm bars from worker threads only clutter logs.
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- memory


def module_bytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        # Tied weights appear once per owner; count the storage once.
        key = tensor.data_ptr() if tensor.device.type != "meta" else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def pipeline_memory_bytes(pipe: Any) -> int:
    modules = {id(m): m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)}
    return sum(module_bytes(m) for m in modules.values())


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


# Public names for engines that run their own loops (LoRA training) and handle OOM themselves.
is_out_of_memory = _is_oom
release_memory = _release_memory


# --------------------------------------------------------------------------- determinism


def make_generator(device: str, seed: int) -> torch.Generator:
    """A generator on the pipeline's device, so the same seed gives the same noise there."""
    gen_device = torch.device(device)
    if gen_device.type not in ("cpu", "cuda"):
        # mps/xpu generators are not reliably reproducible; diffusers moves CPU noise over.
        gen_device = torch.device("cpu")
    return torch.Generator(gen_device).manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


# --------------------------------------------------------------------------- images


def round_to_multiple(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def fit_mask(mask: Image.Image, width: int, height: int) -> Image.Image:
    # Nearest keeps a binary mask binary; white (255) means "repaint here".
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return mask


# --------------------------------------------------------------------------- acceleration


def acceleration_config(level: str) -> Any | None:
    """The diffusers cache config for an acceleration level (``None`` for ``none``)."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if level == "none":
        return None
    if level == "regular":
        return FirstBlockCacheConfig(threshold=REGULAR_FBC_THRESHOLD)
    if level == "high":
        return TaylorSeerCacheConfig(
            cache_interval=HIGH_TAYLORSEER_CACHE_INTERVAL,
            disable_cache_before_step=HIGH_TAYLORSEER_WARMUP_STEPS,
            max_order=HIGH_TAYLORSEER_MAX_ORDER,
            # float32 factors: bfloat16 differences of nearby activations lose most of their bits.
            taylor_factors_dtype=torch.float32,
        )
    raise InputError("acceleration", f"must be one of {', '.join(ACCELERATION_LEVELS)}, got {level!r}")


@contextlib.contextmanager
def accelerated(denoiser: Any, level: str) -> Iterator[bool]:
    """Enable the level's cache hooks on ``denoiser`` for the duration of one call.

    Hooks carry per-call state (cached residuals, Taylor factors), so they are attached fresh for
    every call and removed afterwards: a warm engine never leaks one job's cache into the next.
    Yields whether a cache is active.
    """
    config = acceleration_config(level)
    if config is None or not hasattr(denoiser, "enable_cache"):
        yield False
        return
    if getattr(denoiser, "is_cache_enabled", False):
        denoiser.disable_cache()
    denoiser.enable_cache(config)
    try:
        # Pipelines that predate cache hooks never open a cache context, and the hooks refuse to run
        # without one. An outer context is harmless for pipelines that open their own ("cond" /
        # "uncond") inside the loop.
        with denoiser.cache_context("imagegate"):
            yield True
    finally:
        denoiser.disable_cache()


# --------------------------------------------------------------------------- LoRA


def lora_adapter_name(path: str) -> str:
    """An adapter name from the file's content, so the same LoRA always gets the same name."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"lora_{digest.hexdigest()[:16]}"


def apply_loras(pipe: Any, loras: Sequence[LoraSpec]) -> list[str]:
    """Load each LoRA file as a named adapter and activate them all with their scales.

    Returns the adapter names; pass them to :func:`remove_loras` when the call is over. A file that
    is missing or does not fit the model raises :class:`InputError` (the client chose it).
    """
    if not loras:
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise InputError("loras", f"{type(pipe).__name__} does not support LoRAs")
    scales: dict[str, float] = {}
    try:
        for index, spec in enumerate(loras):
            if not os.path.isfile(spec.path):
                raise InputError(f"loras[{index}]", f"file not found: {spec.path}")
            name = lora_adapter_name(spec.path)
            if name in scales:
                # The same file twice is the same adapter; its strengths add up.
                scales[name] += float(spec.scale)
                continue
            try:
                pipe.load_lora_weights(spec.path, adapter_name=name)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                if _is_oom(exc):
                    raise
                raise InputError(f"loras[{index}]", f"cannot apply LoRA to this model: {exc}") from exc
            scales[name] = float(spec.scale)
        names = list(scales)
        pipe.set_adapters(names, adapter_weights=[scales[n] for n in names])
    except BaseException:
        remove_loras(pipe, list(scales))
        raise
    return names


def remove_loras(pipe: Any, names: Sequence[str]) -> None:
    """Return the pipeline to its base weights."""
    if not names and not _has_lora_layers(pipe):
        return
    # unload_lora_weights drops every adapter and peft layer (and restores any module a Control
    # LoRA widened), so the next job runs exactly on the base weights.
    pipe.unload_lora_weights()


def _has_lora_layers(pipe: Any) -> bool:
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module) and getattr(component, "peft_config", None):
            return True
    return False


@contextlib.contextmanager
def loras_applied(pipe: Any, loras: Sequence[LoraSpec]) -> Iterator[list[str]]:
    names = apply_loras(pipe, loras)
    try:
        yield names
    finally:
        if names:
            remove_loras(pipe, names)


# --------------------------------------------------------------------------- the engine


def _runs_true_cfg(kwargs: dict[str, Any]) -> bool:
    negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
    return negative and float(kwargs.get("true_cfg_scale") or 1.0) > 1.0


class _StepReporter:
    """Adapts diffusers' ``callback_on_step_end`` to imagegate's ``on_step(step, total)``."""

    def __init__(self, on_step: StepCallback, planned_steps: int | None) -> None:
        self.on_step = on_step
        self.planned_steps = planned_steps
        self.steps_done = 0
        self.total = planned_steps or 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # img2img-style pipelines run fewer steps than requested (strength); the pipeline knows the
        # real count once it built its schedule.
        total = getattr(pipe, "_num_timesteps", None) or self.planned_steps or step + 1
        self.total = int(total)
        self.steps_done = step + 1
        self.on_step(step + 1, self.total)
        return {}


class DiffusersEngine:
    """A warm diffusers pipeline behind the :class:`~imagegate.engines.base.Engine` protocol.

    Subclasses set :attr:`pipeline_class` and :attr:`tasks` and implement :meth:`pipeline_kwargs`.
    ``generator``, ``num_images_per_prompt``, ``callback_on_step_end`` and ``output_type`` are filled
    in here; LoRAs and acceleration wrap the call. Calls on one engine are serialised because LoRA
    adapters and cache hooks mutate the shared pipeline.
    """

    pipeline_class: ClassVar[type]
    tasks: ClassVar[frozenset[str]] = frozenset()
    family: ClassVar[str] = "diffusers"
    # Whether the pipeline's loop opens separate ``cache_context("cond"/"uncond")`` blocks. Without
    # them every transformer call shares one cache state, which is only correct when there is a
    # single branch, so acceleration is refused together with true CFG (a negative prompt).
    opens_cache_contexts: ClassVar[bool] = False

    def __init__(
        self,
        pipe: Any,
        *,
        device: str,
        dtype: torch.dtype,
        model_id: str | None = None,
        source: str | None = None,
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self.source = source
        self.memory_bytes = pipeline_memory_bytes(pipe)
        self._lock = threading.Lock()

    # -- factory

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        model_id: str | None = None,
    ) -> Self:
        resolved_device, torch_dtype = resolve_device_dtype(device, dtype)
        pipe = load_pipeline(cls.pipeline_class, source, device=resolved_device, dtype=torch_dtype, model_id=model_id)
        return cls(pipe, device=resolved_device, dtype=torch_dtype, model_id=model_id, source=source)

    # -- introspection

    @property
    def name(self) -> str:
        return self.model_id or self.source or type(self).__name__

    @property
    def denoiser(self) -> Any:
        pipe = self._require_pipe()
        return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self._require_pipe(), "vae_scale_factor", 8))

    # -- the family hook

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        """The family's ``__call__`` arguments for ``call`` (prompt, sizes, steps, images, ...)."""
        raise NotImplementedError

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {"seed": call.seed, "acceleration": call.acceleration}
        for key in ("num_inference_steps", "guidance_scale", "strength", "true_cfg_scale"):
            if kwargs.get(key) is not None:
                info[key] = kwargs[key]
        return info

    # -- Engine protocol

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        if call.task not in self.tasks:
            raise InputError("task", f"{self.name} does not support {call.task!r}")
        if call.num_images < 1:
            raise InputError("num_images", "must be at least 1")
        acceleration_config(call.acceleration)  # reject unknown levels before any work
        with self._lock:
            pipe = self._require_pipe()
            kwargs = self.pipeline_kwargs(call)
            if call.acceleration != "none" and not self.opens_cache_contexts and _runs_true_cfg(kwargs):
                raise InputError("acceleration", f"{self.name} cannot combine acceleration with a negative prompt")
            kwargs.setdefault("num_images_per_prompt", call.num_images)
            kwargs["generator"] = make_generator(self.device, call.seed)
            reporter = _StepReporter(on_step, kwargs.get("num_inference_steps"))
            kwargs["callback_on_step_end"] = reporter
            kwargs["output_type"] = "pil"
            try:
                with loras_applied(pipe, call.loras), accelerated(self.denoiser, call.acceleration):
                    output = pipe(**kwargs)
            except (JobCanceledError, InputError):
                raise
            except Exception as exc:
                if _is_oom(exc):
                    # Return the failed call's cached blocks to the driver so the next job (and other
                    # engines on the device) do not inherit a fragmented allocator.
                    _release_memory()
                    raise EngineError(
                        f"{self.name}: out of memory on {self.device}; lower the size or num_images, "
                        "or give the model a device with more memory"
                    ) from exc
                raise EngineError(f"{self.name}: {exc}") from exc
            images = list(output.images)
            info = self.result_info(call, kwargs)
            info["steps_run"] = reporter.steps_done
            return EngineResult(images=images, info=info)

    def unload(self) -> None:
        with self._lock:
            pipe, self.pipe = self.pipe, None
            if pipe is None:
                return
            # The engine holds the only reference: dropping it and collecting frees the weights now
            # rather than whenever the manager's caller lets go.
            del pipe
            self.memory_bytes = 0
            _release_memory()

    def _require_pipe(self) -> Any:
        if self.pipe is None:
            raise EngineError(f"{self.name}: engine was unloaded")
        return self.pipe
