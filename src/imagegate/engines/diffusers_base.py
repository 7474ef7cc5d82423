"""Shared machinery for every engine built on a diffusers pipeline.

A family module (``flux1``, ``flux2``, ``qwen_image``, ...) subclasses :class:`DiffusersEngine`, names
its ``pipeline_class`` and ``tasks``, and turns an :class:`EngineCall` into the pipeline's ``__call__``
keyword arguments in :meth:`DiffusersEngine.pipeline_kwargs`. Everything that is the same for all of
them lives here: loading with ``from_pretrained`` (and the error an operator sees when weights are
missing), device and dtype resolution, seeded generators, step reporting and cancellation,
batched ``num_images``, acceleration through diffusers' cache hooks, per-call LoRAs, turning
pipeline failures (OOM included) into :class:`EngineError`, the speed options of
:class:`EngineOptions` (applied by :mod:`imagegate.engines.speed`; compiled engines warm up at load and
count their recompilations here), and sharing loaded components between engines over the same
weights (:class:`ComponentCache`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import torch
from PIL import Image

from imagegate.engines.base import CallOptions, EngineCall, EngineResult, LoraSpec, StepCallback
from imagegate.engines.options import EngineOptions, WarmupSize
from imagegate.engines.speed import (
    RecompileLimitHit,
    _applied,
    apply_optimisations,
    compile_denoiser,
    compile_failed,
    compiled_execution,
    compiled_graphs,
    eager_execution,
    fp8_probe,
    fp8_unavailable_reason,
    fp32_precision,
    fuse_qkv_projections,
    hit_recompile_limit,
    hooks_inside_compiled_regions,
    is_compile_error,
    is_compiled,
    qkv_unfused,
    quantize_fp8,
)
from imagegate.exceptions import (
    EngineError,
    InputError,
    JobCanceledError,
    WeightsNotFoundError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ACCELERATION_LEVELS",
    "HIGH_TAYLORSEER_CACHE_INTERVAL",
    "HIGH_TAYLORSEER_MAX_ORDER",
    "HIGH_TAYLORSEER_WARMUP_STEPS",
    "REGULAR_FBC_THRESHOLD",
    "ComponentCache",
    "DiffusersEngine",
    "EngineOptions",
    "RecompileLimitHit",
    "WarmupSize",
    "accelerated",
    "acceleration_config",
    "apply_loras",
    "apply_optimisations",
    "compile_denoiser",
    "compile_failed",
    "compiled_execution",
    "compiled_graphs",
    "eager_execution",
    "fit_image",
    "fit_mask",
    "fp8_probe",
    "fp8_unavailable_reason",
    "fp32_precision",
    "fuse_qkv_projections",
    "hit_recompile_limit",
    "hooks_inside_compiled_regions",
    "is_compile_error",
    "is_compiled",
    "is_out_of_memory",
    "load_pipeline",
    "lora_adapter_name",
    "loras_applied",
    "make_generator",
    "memory_blocks",
    "module_bytes",
    "pipeline_memory_bytes",
    "qkv_unfused",
    "quantize_fp8",
    "release_memory",
    "remove_loras",
    "resolve_device",
    "resolve_device_dtype",
    "resolve_dtype",
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
    component_loader: Callable[[str], dict[str, Any]] | None = None,
    **from_pretrained_kwargs: Any,
) -> Any:
    """``pipeline_class.from_pretrained(source, dtype=...)`` moved to the resolved device.

    ``component_loader(source)`` builds components to pass in instead of the checkpoint's own
    classes (read from the same weights, so its missing files count as missing weights).

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
        built = component_loader(source) if component_loader is not None else {}
        # A component passed in (shared with another engine) wins over the freshly built one.
        # Either joins after loading: diffusers checks a passed component against the class the
        # checkpoint names, which may be one that cannot be imported here (the reason to build a
        # stand-in). Passing None skips loading it.
        attach = {name: from_pretrained_kwargs.pop(name, part) for name, part in built.items()}
        skipped = dict.fromkeys(attach)
        pipe = pipeline_class.from_pretrained(source, dtype=torch_dtype, **skipped, **from_pretrained_kwargs)
        if attach:
            pipe.register_modules(**attach)
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
    # Components passed in (shared with another engine) are already where they belong: moving them
    # again could only disturb the engine using them.
    passed = {name for name, value in from_pretrained_kwargs.items() if isinstance(value, torch.nn.Module)}
    try:
        if passed:
            for name, component in pipe.components.items():
                if isinstance(component, torch.nn.Module) and name not in passed:
                    component.to(resolved_device)
        else:
            pipe.to(resolved_device)
    except torch.OutOfMemoryError as exc:
        del pipe
        release_memory()
        raise EngineError(f"{model_id or source}: out of memory moving weights to {resolved_device}") from exc
    # The server owns progress reporting; tqdm bars from worker threads only clutter logs.
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- memory


def _storages(tensor: torch.Tensor) -> Iterator[tuple[Hashable, int]]:
    """``(key, bytes)`` for every allocation behind ``tensor``.

    Views share their base's storage (fused QKV projections alias their parts this way), so the key is
    the storage, not the tensor. Quantised tensor subclasses (torchao's fp8 weights) hold their data in
    inner tensors, which are walked instead.
    """
    if tensor.device.type == "meta":
        yield ("meta", id(tensor)), tensor.numel() * tensor.element_size()
        return
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        try:
            names, _ = flatten()
        except (AttributeError, TypeError, RuntimeError, NotImplementedError):  # pragma: no cover
            # An exotic subclass: fall back to its logical size below.
            names = []
        if names:
            for name in names:
                inner = getattr(tensor, name, None)
                if isinstance(inner, torch.Tensor):
                    yield from _storages(inner)
            return
    try:
        storage = tensor.untyped_storage()
        yield (tensor.device.type, tensor.device.index, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # pragma: no cover - a wrapper without storage
        yield ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def memory_blocks(*modules: Any) -> dict[Hashable, int]:
    """Every distinct allocation held by the parameters and buffers of ``modules``, with its size.

    Summing the union of several engines' blocks counts weights they share once.
    """
    blocks: dict[Hashable, int] = {}
    seen: set[int] = set()
    for module in modules:
        if not isinstance(module, torch.nn.Module) or id(module) in seen:
            continue
        seen.add(id(module))
        for tensor in list(module.parameters()) + list(module.buffers()):
            for key, size in _storages(tensor):
                blocks[key] = size
    return blocks


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of weights and buffers, each allocation once (tied weights and views count once)."""
    return sum(memory_blocks(module).values())


def _pipeline_modules(pipe: Any) -> list[torch.nn.Module]:
    modules = {id(m): m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)}
    return list(modules.values())


def pipeline_memory_bytes(pipe: Any) -> int:
    return sum(memory_blocks(*_pipeline_modules(pipe)).values())


def release_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator (or allocator) out-of-memory error."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    # The CPU allocator reports failure as a RuntimeError of its own wording.
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


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


# --------------------------------------------------------------------------- shared components


def _scheduler_like(component: Any) -> bool:
    return hasattr(component, "set_timesteps") or type(component).__name__.endswith("Scheduler")


class ComponentCache:
    """Loaded pipeline components, per weights source, for engines to share.

    Several engine keys load the same checkpoint (FLUX.2 [dev]: text-to-image, edit, relight and
    the LoRA trainer; Qwen-Image: text-to-image and edit). Through one cache (the model manager owns
    one) the second and later engines reuse the first one's transformer, text encoders, VAE and
    tokenizers instead of loading their own copies, and all engines of a source share one call lock,
    because LoRA adapters, cache hooks and training mutate the shared modules.

    Only weak references are kept: a component lives as long as some engine uses it. Components are
    keyed by ``(source, device, dtype)``, their name and a variant: an fp8-quantised transformer is
    a different thing from the bf16 one a LoRA trainer needs. Schedulers are never shared (they hold
    per-call state); each pipeline builds its own from the checkpoint's config.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Hashable, str, str], weakref.ReferenceType] = {}
        self._call_locks: dict[Hashable, threading.Lock] = {}
        self._load_locks: dict[Hashable, threading.Lock] = {}

    @staticmethod
    def group(source: str, device: str, dtype: torch.dtype) -> tuple[str, str, str]:
        expanded = os.path.expanduser(source)
        key = os.path.realpath(expanded) if os.path.isdir(expanded) else source
        return key, str(torch.device(device)), str(dtype)

    def call_lock(self, group: Hashable) -> threading.Lock:
        """The lock every engine over ``group``'s components holds while it runs."""
        with self._lock:
            return self._call_locks.setdefault(group, threading.Lock())

    def load_lock(self, group: Hashable) -> threading.Lock:
        """Held while an engine over ``group`` loads (never while it runs)."""
        with self._lock:
            return self._load_locks.setdefault(group, threading.Lock())

    def find(self, group: Hashable, variants: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The live components of ``group`` with the wanted variants (``""`` unless named)."""
        variants = variants or {}
        found: dict[str, Any] = {}
        with self._lock:
            for key, ref in list(self._entries.items()):
                entry_group, name, variant = key
                component = ref()
                if component is None:
                    del self._entries[key]
                elif entry_group == group and variants.get(name, "") == variant:
                    found[name] = component
        return found

    def register(self, group: Hashable, components: Mapping[str, Any], variants: Mapping[str, str] | None = None) -> None:
        variants = variants or {}
        with self._lock:
            for name, component in components.items():
                if component is None or _scheduler_like(component) or isinstance(component, (str, int, float, bool)):
                    continue
                try:
                    ref = weakref.ref(component)
                except TypeError:
                    continue
                self._entries[(group, name, variants.get(name, ""))] = ref

    def live(self) -> list[tuple[Hashable, str, str]]:
        """``(group, name, variant)`` of every component still alive (for tests and diagnostics)."""
        with self._lock:
            return [key for key, ref in self._entries.items() if ref() is not None]


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


_DEFAULT_CONFIG = object()


@contextlib.contextmanager
def accelerated(denoiser: Any, level: str, config: Any = _DEFAULT_CONFIG) -> Iterator[bool]:
    """Enable the level's cache hooks on ``denoiser`` for the duration of one call.

    ``config`` is the cache config to use (``None``: no cache); by default the shared one for
    ``level`` (:func:`acceleration_config`). Engines pass their own
    (:meth:`DiffusersEngine.acceleration_config`).

    Hooks carry per-call state (cached residuals, Taylor factors), so they are attached fresh for
    every call and removed afterwards: a warm engine never leaks one job's cache into the next.
    Yields whether a cache is active.
    """
    if config is _DEFAULT_CONFIG:
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
                if is_out_of_memory(exc):
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


# What a compiled engine runs at load per warm-up size: enough steps to compile the transformer's
# blocks and check the second step reuses them.
WARMUP_STEPS = 2
WARMUP_PROMPT = "a photograph of a lighthouse on a rocky coast at dusk"


class DiffusersEngine:
    """A warm diffusers pipeline behind the :class:`~imagegate.engines.base.Engine` protocol.

    Subclasses set :attr:`pipeline_class` and :attr:`tasks` and implement :meth:`pipeline_kwargs`.
    ``generator``, ``num_images_per_prompt``, ``callback_on_step_end`` and ``output_type`` are filled
    in here; LoRAs and acceleration wrap the call. Calls are serialised by a lock that every engine
    sharing this one's components holds too, because LoRA adapters and cache hooks mutate the shared
    modules.
    """

    pipeline_class: ClassVar[type]
    tasks: ClassVar[frozenset[str]] = frozenset()
    family: ClassVar[str] = "diffusers"
    # The family's typed call options (EngineCall.options).
    options_type: ClassVar[type[CallOptions]] = CallOptions
    # Whether the pipeline's loop opens separate ``cache_context("cond"/"uncond")`` blocks. Without
    # them every transformer call shares one cache state, which is only correct when there is a
    # single branch, so acceleration is refused together with true CFG (a negative prompt).
    opens_cache_contexts: ClassVar[bool] = False
    # Whether the transformer's attention computes from fused Q/K/V when asked (diffusers' FLUX.1 and
    # FLUX.2 attention do; Qwen-Image's ignores the fused weight, so fusing would only cost time).
    qkv_fusion: ClassVar[bool] = False
    # Engines that train the transformer (LoRA) need its bf16 weights and eager execution.
    allows_fp8: ClassVar[bool] = True
    allows_compile: ClassVar[bool] = True
    # Input images a warm-up call needs (editing engines condition on one).
    warmup_images: ClassVar[int] = 0

    def __init__(
        self,
        pipe: Any,
        *,
        device: str,
        dtype: torch.dtype,
        model_id: str | None = None,
        source: str | None = None,
        options: EngineOptions | Mapping[str, Any] | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self.source = source
        self._lock = lock or threading.Lock()
        self.options = EngineOptions.coerce(options).for_device(device)
        self.optimisations: dict[str, str] = {}
        # Graphs torch.compile built for this engine: during warm-up, and after it (each of those is a
        # request that paid a compilation).
        self.warmup_graphs = 0
        self.recompiles = 0
        self._warming_up = False
        # Warming up waits for load(): a subclass finishes setting itself up after this returns.
        self.apply_options(EngineOptions.coerce(options), warm_up=False)

    # -- factory

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        model_id: str | None = None,
        options: EngineOptions | Mapping[str, Any] | None = None,
        components: ComponentCache | None = None,
    ) -> Self:
        """Load ``source`` and apply ``options`` (default: :class:`EngineOptions`' defaults).

        With a ``components`` cache, components another engine already loaded from the same source
        (on the same device and dtype) are reused rather than loaded again, and this engine shares
        that engine's call lock.
        """
        resolved_device, torch_dtype = resolve_device_dtype(device, dtype)
        requested = EngineOptions.coerce(options)
        if components is None:
            pipe = load_pipeline(cls.pipeline_class, source, device=resolved_device, dtype=torch_dtype,
                                 model_id=model_id, component_loader=cls.load_components)
            engine = cls(pipe, device=resolved_device, dtype=torch_dtype, model_id=model_id, source=source, options=requested)
            engine.warm_up_if_compiled()
            return engine
        variants = cls.component_variants(requested.for_device(resolved_device), resolved_device)
        group = ComponentCache.group(source, resolved_device, torch_dtype)
        # One load per source at a time, so a concurrent second engine reuses the first's components.
        with components.load_lock(group):
            reuse = components.find(group, variants)
            if reuse:
                logger.info("%s: reusing %s loaded from %s", model_id or source, ", ".join(sorted(reuse)), source)
            pipe = load_pipeline(
                cls.pipeline_class,
                source,
                device=resolved_device,
                dtype=torch_dtype,
                model_id=model_id,
                component_loader=cls.load_components,
                **reuse,
            )
            engine = cls(
                pipe,
                device=resolved_device,
                dtype=torch_dtype,
                model_id=model_id,
                source=source,
                options=requested,
                lock=components.call_lock(group),
            )
            components.register(group, pipe.components, variants)
        engine.warm_up_if_compiled()
        return engine

    @classmethod
    def load_components(cls, source: str) -> dict[str, Any]:
        """Components to build here rather than from the checkpoint's own classes (none by default)."""
        return {}

    @classmethod
    def component_variants(cls, options: EngineOptions, device: str = "cuda") -> dict[str, str]:
        """Components this engine needs in a form other engines may not share (an fp8 transformer)."""
        if options.fp8 and cls.allows_fp8 and fp8_unavailable_reason(device) is None and fp8_probe(device) is None:
            return {"transformer": "fp8"}
        return {}

    def apply_options(self, options: EngineOptions | Mapping[str, Any], *, warm_up: bool = True) -> dict[str, str]:
        """Apply (more) speed options to the loaded pipeline; what was done lands in
        :attr:`optimisations`. Options only add: fusing, quantising or compiling is not undone. A
        compiled engine then runs ``options.warmup_sizes`` (unless ``warm_up`` is false)."""
        options = EngineOptions.coerce(options)
        with self._lock:
            pipe = self._require_pipe()
            # The requested options, so the report says "n/a: not CUDA" rather than "off".
            report = apply_optimisations(
                pipe,
                options,
                device=self.device,
                qkv_fusion=self.qkv_fusion,
                fp8=self.allows_fp8,
                compile=self.allows_compile,
            )
            self.options = options.for_device(self.device)
            self.optimisations = report
            self._blocks = memory_blocks(*_pipeline_modules(pipe))
            self.memory_bytes = sum(self._blocks.values())
        if report["fp8"].startswith("n/a"):
            logger.warning("%s: fp8 refused, serving %s: %s", self.name, self.dtype, report["fp8"].removeprefix("n/a: "))
        if warm_up:
            self.warm_up_if_compiled()
        return report

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

    @property
    def step_distilled(self) -> bool:
        """Whether the weights are step-distilled (a handful of steps, each one moving the image a
        lot): step caches cannot help there, so acceleration is not applied."""
        return False

    def memory_blocks(self) -> dict[Hashable, int]:
        """This engine's allocations (see :func:`memory_blocks`), as of loading. The model manager
        sums the union over its engines, so components engines share count once."""
        return dict(getattr(self, "_blocks", {}))

    # -- the family hooks

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        """The family's ``__call__`` arguments for ``call`` (prompt, sizes, steps, images, ...)."""
        raise NotImplementedError

    def acceleration_config(self, level: str) -> Any | None:
        """The diffusers cache config for ``level`` on this engine's transformer (``None``: none).

        Raises :class:`InputError` for an unknown level. Families whose transformer cannot take the
        shared config override this (FLUX.2 swaps First Block Cache for TaylorSeer).
        """
        return acceleration_config(level)

    def accelerated(self, level: str) -> contextlib.AbstractContextManager[bool]:
        return accelerated(self.denoiser, level, self.acceleration_config(level))

    def result_info(self, call: EngineCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {"seed": call.seed, "acceleration": call.acceleration}
        for key in ("num_inference_steps", "guidance_scale", "strength", "true_cfg_scale"):
            if kwargs.get(key) is not None:
                info[key] = kwargs[key]
        return info

    def warmup_call(self, size: WarmupSize) -> EngineCall:
        """The call :meth:`warm_up` runs at ``size``: the engine's first task, its input images grey."""
        task = min(self.tasks)
        grey = Image.new("RGB", (size.width, size.height), (128, 128, 128))
        return EngineCall(
            task=task,
            prompt=WARMUP_PROMPT,
            width=size.width,
            height=size.height,
            num_images=size.batch,
            num_inference_steps=WARMUP_STEPS,
            images=[grey] * self.warmup_images,
            mask=Image.new("L", grey.size, 255) if task == "inpaint" else None,
        )

    def warm_up_if_compiled(self) -> None:
        if is_compiled(self.denoiser) and not compile_failed(self.denoiser) and self.options.warmup_sizes:
            self.warm_up(self.options.warmup_sizes)

    def warm_up(self, sizes: Sequence[WarmupSize]) -> None:
        """Run one short call at each size, so torch.compile builds its graphs now rather than in a
        user's first request at a common size. Failures are logged, never raised: the engine serves."""
        for size in sizes:
            before, started = compiled_graphs(self.denoiser), time.perf_counter()
            self._warming_up = True
            try:
                self(self.warmup_call(size), lambda step, total: None)
            except (EngineError, InputError) as exc:
                logger.warning("%s: warm-up at %s failed: %s", self.name, size, exc)
                continue
            finally:
                self._warming_up = False
            graphs = compiled_graphs(self.denoiser) - before
            self.warmup_graphs += graphs
            logger.info("%s: warmed up %s in %.1f s (%d graph(s) compiled)", self.name, size,
                        time.perf_counter() - started, graphs)

    def acceleration_level(self, call: EngineCall) -> str:
        """The cache level ``call`` runs with: its own, except on step-distilled weights."""
        self.acceleration_config(call.acceleration)  # reject unknown levels before any work
        return "none" if self.step_distilled else call.acceleration

    @contextlib.contextmanager
    def execution(self, call: EngineCall) -> Iterator[None]:
        """How the transformer runs for ``call``, entered once its LoRAs and cache hooks are in place:
        compiled unless the call changes what the compiled blocks would trace (LoRA layers, cache
        hooks inside the blocks), which would recompile them; unfused for LoRAs, which sit on the
        separate projections."""
        denoiser = self.denoiser
        with contextlib.ExitStack() as stack:
            if is_compiled(denoiser):
                if call.loras or compile_failed(denoiser) or hooks_inside_compiled_regions(denoiser):
                    stack.enter_context(eager_execution())
                else:
                    stack.enter_context(compiled_execution(denoiser))
            if call.loras:
                stack.enter_context(qkv_unfused(denoiser))
            yield

    # -- Engine protocol

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        if call.task not in self.tasks:
            raise InputError("task", f"{self.name} does not support {call.task!r}")
        if call.num_images < 1:
            raise InputError("num_images", "must be at least 1")
        with self._lock:
            pipe = self._require_pipe()
            level = self.acceleration_level(call)
            kwargs = self.pipeline_kwargs(call)
            if level != "none" and not self.opens_cache_contexts and _runs_true_cfg(kwargs):
                raise InputError("acceleration", f"{self.name} cannot combine acceleration with a negative prompt")
            kwargs.setdefault("num_images_per_prompt", call.num_images)
            kwargs["output_type"] = "pil"
            graphs = compiled_graphs(self.denoiser)
            try:
                try:
                    output, reporter = self._run(pipe, call, kwargs, level, on_step)
                except RecompileLimitHit as exc:
                    self.optimisations["compile"] = "on (recompile limit reached: new shapes run eagerly)"
                    logger.warning(
                        "%s: %s at %sx%s x%d; shapes compiled so far keep their code, new ones run eagerly "
                        "from now on (list the sizes you serve in warmup_sizes, or raise "
                        "torch._dynamo.config.recompile_limit)", self.name, exc, kwargs.get("width"),
                        kwargs.get("height"), call.num_images)
                    output, reporter = self._run(pipe, call, kwargs, level, on_step)
            except (JobCanceledError, InputError):
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    # Return the failed call's cached blocks to the driver so the next job (and other
                    # engines on the device) do not inherit a fragmented allocator.
                    release_memory()
                    raise EngineError(
                        f"{self.name}: out of memory on {self.device}; lower the size or num_images, "
                        "or give the model a device with more memory"
                    ) from exc
                if is_compiled(self.denoiser) and not compile_failed(self.denoiser) and is_compile_error(exc):
                    # One failed compilation must not fail every job: the engine runs eagerly from now on.
                    _applied(self.denoiser).add("compile_failed")
                    self.optimisations["compile"] = f"n/a: compilation failed: {type(exc).__name__}"
                    logger.warning("%s: torch.compile failed; running uncompiled from now on", self.name, exc_info=True)
                    raise EngineError(f"{self.name}: compilation failed ({exc}); retry runs uncompiled") from exc
                raise EngineError(f"{self.name}: {exc}") from exc
            images = list(output.images)
            info = self.result_info(call, kwargs)
            info["steps_run"] = reporter.steps_done
            if level != call.acceleration:
                info["acceleration"] = level
                info["acceleration_skipped"] = "step-distilled weights: step caches cannot help"
            if is_compiled(self.denoiser):
                info["compiled_graphs"] = self._count_compilations(call, kwargs, compiled_graphs(self.denoiser) - graphs)
            return EngineResult(images=images, info=info)

    def _run(self, pipe: Any, call: EngineCall, kwargs: dict[str, Any], level: str, on_step: StepCallback) -> tuple[Any, _StepReporter]:
        """One pipeline call: fresh generator and step reporter, LoRAs and cache hooks on, the
        transformer compiled or eager (:meth:`execution`), float32 precision as configured."""
        kwargs["generator"] = make_generator(self.device, call.seed)
        reporter = _StepReporter(on_step, kwargs.get("num_inference_steps"))
        kwargs["callback_on_step_end"] = reporter
        with (
            loras_applied(pipe, call.loras),
            self.accelerated(level),
            self.execution(call),
            fp32_precision(self.options.tf32),
        ):
            return pipe(**kwargs), reporter

    def _count_compilations(self, call: EngineCall, kwargs: dict[str, Any], graphs: int) -> int:
        if graphs and not self._warming_up:
            self.recompiles += graphs
            logger.warning(
                "%s: compiled %d graph(s) for %sx%s x%d (%d since load): a shape warmup_sizes does "
                "not cover; this request paid the compilation", self.name, graphs, kwargs.get("width"),
                kwargs.get("height"), call.num_images, self.recompiles)
        return graphs

    def unload(self) -> None:
        with self._lock:
            pipe, self.pipe = self.pipe, None
            if pipe is None:
                return
            # Dropping the engine's reference and collecting frees the weights now rather than
            # whenever the manager's caller lets go, unless another engine shares them.
            del pipe
            self.memory_bytes = 0
            self._blocks = {}
            release_memory()

    def _require_pipe(self) -> Any:
        if self.pipe is None:
            raise EngineError(f"{self.name}: engine was unloaded")
        return self.pipe
