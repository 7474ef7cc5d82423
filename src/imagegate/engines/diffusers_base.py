"""Shared machinery for every engine built on a diffusers pipeline.

A family module (``flux1``, ``flux2``, ``qwen_image``, ...) subclasses :class:`DiffusersEngine`, names
its ``pipeline_class`` and ``tasks``, and turns an :class:`EngineCall` into the pipeline's ``__call__``
keyword arguments in :meth:`DiffusersEngine.pipeline_kwargs`. Everything that is the same for all of
them lives here: loading with ``from_pretrained`` (and the error an operator sees when weights are
missing), device and dtype resolution, seeded generators, step reporting and cancellation,
batched ``num_images``, acceleration through diffusers' cache hooks, per-call LoRAs, turning
pipeline failures (OOM included) into :class:`EngineError`, the speed options of
:class:`EngineOptions` (fused QKV, fp8, ``torch.compile``, channels-last VAE, TF32) and sharing loaded
components between engines over the same weights (:class:`ComponentCache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from PIL import Image

from imagegate.engines.base import EngineCall, EngineResult, LoraSpec, StepCallback
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
    "accelerated",
    "acceleration_config",
    "apply_loras",
    "apply_optimisations",
    "compile_denoiser",
    "compile_failed",
    "eager_execution",
    "fit_image",
    "fit_mask",
    "fp8_unavailable_reason",
    "fuse_qkv_projections",
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


# --------------------------------------------------------------------------- speed options


@dataclass(frozen=True)
class EngineOptions:
    """Speed options an engine factory applies when it loads a pipeline (``DiffusersEngine.load(...,
    options=EngineOptions(...))``, or a mapping with these keys).

    * ``fuse_qkv`` (default on): one matmul for each attention's query/key/value projections instead
      of three, on transformers whose attention honours it (FLUX.1, FLUX.2; not Qwen-Image). The
      separate projections stay as views of the fused weight, so it costs no memory, and LoRAs
      (which target the separate projections) run those calls unfused. Same arithmetic, so it is
      on everywhere, the CPU included.
    * ``compile`` (default off): ``torch.compile`` of the transformer's repeated blocks (regional
      compilation). The first call at each new resolution pays the compilation (tens of seconds on
      an H100); calls with LoRAs or acceleration run eagerly rather than recompile.
    * ``fp8`` (default off): torchao float8 dynamic quantisation (per-row scales) of the
      transformer's Linear layers. Needs torchao and a GPU with fp8 tensor cores (compute capability
      8.9+: Ada, Hopper, Blackwell); silently off otherwise. Halves the transformer's memory; replaces
      ``fuse_qkv`` (fp8 weights are not fused). Engines that train (LoRA) never quantise.
    * ``channels_last_vae`` (default on, CUDA only): the VAE's 2-D convolutions in NHWC (cuDNN's
      fast layout). VAEs with 3-D convolutions (Qwen-Image) are left alone.
    * ``tf32`` (default on, CUDA only): TF32 tensor cores for the float32 matmuls and convolutions
      that remain in a bf16 pipeline. Process-wide; never turned off once on.
    * ``compile_backend``: the ``torch.compile`` backend; ``"inductor"`` in production, ``"eager"``
      to exercise the compile path without code generation (tests, ``benchmarks/gpu.py --tiny``).
    """

    compile: bool = False
    fuse_qkv: bool = True
    fp8: bool = False
    channels_last_vae: bool = True
    tf32: bool = True
    compile_backend: str = "inductor"

    @classmethod
    def coerce(cls, value: EngineOptions | Mapping[str, Any] | None) -> EngineOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise EngineError(f"unknown engine option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return cls(**dict(value))
        raise EngineError(f"engine options must be EngineOptions or a mapping, not {type(value).__name__}")

    @classmethod
    def eager(cls) -> EngineOptions:
        """Every optimisation off: the baseline ``benchmarks/gpu.py`` compares against."""
        return cls(compile=False, fuse_qkv=False, fp8=False, channels_last_vae=False, tf32=False)

    def for_device(self, device: str) -> EngineOptions:
        """What ``device`` can use: fp8, channels-last and TF32 only mean something on CUDA."""
        if torch.device(device).type == "cuda":
            return self
        return dataclasses.replace(self, fp8=False, channels_last_vae=False, tf32=False)


_APPLIED = "_imagegate_optimisations"  # per-module record of what was applied (modules are shared)


def _applied(module: Any) -> set[str]:
    record = getattr(module, _APPLIED, None)
    if record is None:
        record = set()
        try:
            object.__setattr__(module, _APPLIED, record)
        except (AttributeError, TypeError):  # pragma: no cover - a slotted object
            pass
    return record


def fuse_qkv_projections(transformer: torch.nn.Module) -> int:
    """Fuse every attention's Q/K/V (and added-context Q/K/V) projections; returns how many modules.

    diffusers keeps the separate projections after fusing, which would cost a second copy of those
    weights; here they become views of the fused weight instead, so memory is unchanged and the
    unfused path (:func:`qkv_unfused`, used for LoRAs) still computes the same projections.
    """
    if not hasattr(transformer, "fuse_qkv_projections"):
        return 0
    transformer.fuse_qkv_projections()
    fused = 0
    with torch.no_grad():
        for module in transformer.modules():
            if not getattr(module, "fused_projections", False):
                continue
            fused += 1
            _alias_parts(module, "to_qkv", ("to_q", "to_k", "to_v"))
            _alias_parts(module, "to_kv", ("to_k", "to_v"))
            _alias_parts(module, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"))
    _applied(transformer).add("fuse_qkv")
    return fused


def _alias_parts(module: torch.nn.Module, fused_name: str, part_names: tuple[str, ...]) -> None:
    fused = getattr(module, fused_name, None)
    parts = [getattr(module, name, None) for name in part_names]
    if not isinstance(fused, torch.nn.Linear) or not all(isinstance(p, torch.nn.Linear) for p in parts):
        return
    offset = 0
    for part in parts:
        rows = part.out_features
        part.weight = torch.nn.Parameter(fused.weight[offset : offset + rows], requires_grad=False)
        if part.bias is not None and fused.bias is not None:
            part.bias = torch.nn.Parameter(fused.bias[offset : offset + rows], requires_grad=False)
        offset += rows


@contextlib.contextmanager
def qkv_unfused(transformer: Any) -> Iterator[None]:
    """Run ``transformer`` on its separate Q/K/V projections for the duration (a LoRA adds its
    matrices to those, not to the fused one). The weights are the same: the parts are views."""
    switched = []
    if transformer is not None:
        for module in transformer.modules():
            if getattr(module, "fused_projections", False):
                module.fused_projections = False
                switched.append(module)
    try:
        yield
    finally:
        for module in switched:
            module.fused_projections = True


# Top-level submodules whose Linear layers fp8 leaves alone: the model's input and output projections
# (small, and the most sensitive to rounding) and the timestep / guidance embedders (one row each,
# nothing to gain). Blocks' own layers (a single-stream block's proj_out included) are quantised.
FP8_SKIP = ("x_embedder", "context_embedder", "img_in", "txt_in", "txt_norm", "proj_out", "norm_out",
            "time_text_embed", "time_guidance_embed")


def fp8_unavailable_reason() -> str | None:
    """``None`` when fp8 quantisation can run here, otherwise why not."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        return "GPU has no fp8 tensor cores (needs compute capability 8.9+)"
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return "torchao is not installed"
    return None


def _fp8_config() -> Any:
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
        )

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    except ImportError:  # torchao < 0.10 spells it as a function
        from torchao.quantization import float8_dynamic_activation_float8_weight
        from torchao.quantization.granularity import PerRow

        return float8_dynamic_activation_float8_weight(granularity=PerRow())


def quantize_fp8(transformer: torch.nn.Module) -> int:
    """torchao float8 dynamic (activations and weights, per-row scales) on the transformer's Linear
    layers whose shapes the fp8 GEMM takes (both sides multiples of 16); returns how many."""
    from torchao.quantization import quantize_

    if "fp8" in _applied(transformer):
        return 0
    if any(getattr(module, "fused_projections", False) for module in transformer.modules()):
        # fp8 weights cannot be concatenated: quantise the separate projections instead (they are
        # views of the fused weight, which is freed once all three are replaced).
        transformer.unfuse_qkv_projections()
        _applied(transformer).discard("fuse_qkv")
    count = 0

    def wanted(module: torch.nn.Module, name: str) -> bool:
        nonlocal count
        ok = (
            isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
            and name.split(".")[0] not in FP8_SKIP
        )
        count += ok
        return ok

    quantize_(transformer, _fp8_config(), filter_fn=wanted)
    _applied(transformer).add("fp8")
    return count


def is_compiled(module: Any) -> bool:
    """Whether ``module`` was compiled (its compiled code runs unless :func:`eager_execution`)."""
    return module is not None and "compile" in _applied(module)


def compile_failed(module: Any) -> bool:
    """Whether compiling ``module`` failed once; it then runs eagerly for good."""
    return module is not None and "compile_failed" in _applied(module)


def is_compile_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) comes from torch.compile's tracing or code generation."""
    while exc is not None:
        if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def compile_denoiser(denoiser: torch.nn.Module, backend: str = "inductor") -> str:
    """``torch.compile`` the transformer: its repeated blocks when diffusers names them (regional
    compilation: one compiled block serves all of them, so compiling takes seconds rather than
    minutes), else the whole model. Lazy: the first call compiles. Returns which was done."""
    if is_compiled(denoiser):
        return "already"
    kind = "whole model"
    if getattr(denoiser, "_repeated_blocks", None) and hasattr(denoiser, "compile_repeated_blocks"):
        denoiser.compile_repeated_blocks(backend=backend)
        kind = "repeated blocks"
    else:
        denoiser.compile(backend=backend)
    _applied(denoiser).add("compile")
    return kind


@contextlib.contextmanager
def eager_execution(active: bool = True) -> Iterator[None]:
    """Run compiled modules eagerly for the duration. Calls that change the transformer (LoRA layers,
    cache hooks, unfused projections) would otherwise recompile it, for tens of seconds each."""
    if not active:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def _channels_last_ok(vae: torch.nn.Module) -> bool:
    return all(p.dim() != 5 for p in vae.parameters())


def apply_optimisations(
    pipe: Any, options: EngineOptions, *, device: str, qkv_fusion: bool = True, fp8: bool = True, compile: bool = True
) -> dict[str, str]:
    """Apply ``options`` to ``pipe`` (on ``device``) in place, idempotently: components may be
    shared with engines that applied them already. ``qkv_fusion``/``fp8``/``compile`` say whether the
    engine allows each. Returns each option's outcome: "on", "off" or "n/a: why"."""
    report: dict[str, str] = {}
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    on_cuda = torch.device(device).type == "cuda"

    if options.tf32 and on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        report["tf32"] = "on"
    else:
        report["tf32"] = "off" if not options.tf32 else "n/a: not CUDA"

    quantised = False
    if options.fp8:
        why = None if fp8 else "this engine trains the weights"
        why = why or (None if denoiser is not None else "no transformer") or fp8_unavailable_reason()
        if why is None:
            try:
                count = quantize_fp8(denoiser)
                quantised = True
                report["fp8"] = f"on ({count} layers)" if count else "on (shared)"
            except Exception as exc:  # a torchao that does not fit: serve unquantised rather than not at all
                logger.warning("fp8 quantisation failed, serving bf16: %s", exc, exc_info=True)
                report["fp8"] = f"n/a: quantisation failed: {type(exc).__name__}: {exc}"
        else:
            report["fp8"] = f"n/a: {why}"
    else:
        report["fp8"] = "off"
    quantised = quantised or (denoiser is not None and "fp8" in _applied(denoiser))

    if not options.fuse_qkv:
        report["fuse_qkv"] = "on (shared)" if denoiser is not None and "fuse_qkv" in _applied(denoiser) else "off"
    elif quantised:
        report["fuse_qkv"] = "n/a: fp8 weights are not fused"
    elif not qkv_fusion or denoiser is None:
        report["fuse_qkv"] = "n/a: not supported by this engine"
    else:
        try:
            fused = fuse_qkv_projections(denoiser)
            report["fuse_qkv"] = "on" if fused else "n/a: nothing to fuse"
        except ValueError as exc:  # diffusers refuses models with "added KV" attention processors
            report["fuse_qkv"] = f"n/a: {exc}"

    vae = getattr(pipe, "vae", None)
    if not options.channels_last_vae:
        report["channels_last_vae"] = "off"
    elif not on_cuda or vae is None:
        report["channels_last_vae"] = "n/a: not CUDA"
    elif not _channels_last_ok(vae):
        report["channels_last_vae"] = "n/a: 3-D convolutions"
    else:
        if "channels_last" not in _applied(vae):
            vae.to(memory_format=torch.channels_last)
            _applied(vae).add("channels_last")
        report["channels_last_vae"] = "on"

    if not options.compile:
        report["compile"] = "off"
    elif not compile or denoiser is None:
        report["compile"] = "n/a: this engine trains the weights" if denoiser is not None else "n/a: no transformer"
    else:
        report["compile"] = f"on ({compile_denoiser(denoiser, options.compile_backend)})"
    return report


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
        self.apply_options(EngineOptions.coerce(options))

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
            return cls(pipe, device=resolved_device, dtype=torch_dtype, model_id=model_id, source=source, options=requested)
        variants = cls.component_variants(requested.for_device(resolved_device))
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
        return engine

    @classmethod
    def load_components(cls, source: str) -> dict[str, Any]:
        """Components to build here rather than from the checkpoint's own classes (none by default)."""
        return {}

    @classmethod
    def component_variants(cls, options: EngineOptions) -> dict[str, str]:
        """Components this engine needs in a form other engines may not share (an fp8 transformer)."""
        if options.fp8 and cls.allows_fp8 and fp8_unavailable_reason() is None:
            return {"transformer": "fp8"}
        return {}

    def apply_options(self, options: EngineOptions | Mapping[str, Any]) -> dict[str, str]:
        """Apply (more) speed options to the loaded pipeline; what was done lands in
        :attr:`optimisations`. Options only add: fusing, quantising or compiling is not undone."""
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

    @contextlib.contextmanager
    def execution(self, call: EngineCall) -> Iterator[None]:
        """How the transformer runs for ``call``: compiled and fused unless the call changes the
        transformer (LoRAs, cache hooks), which would recompile it or bypass the LoRA layers."""
        denoiser = self.denoiser
        changes_transformer = bool(call.loras) or call.acceleration != "none"
        with contextlib.ExitStack() as stack:
            eager = is_compiled(denoiser) and (changes_transformer or compile_failed(denoiser))
            stack.enter_context(eager_execution(eager))
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
            self.acceleration_config(call.acceleration)  # reject unknown levels before any work
            kwargs = self.pipeline_kwargs(call)
            if call.acceleration != "none" and not self.opens_cache_contexts and _runs_true_cfg(kwargs):
                raise InputError("acceleration", f"{self.name} cannot combine acceleration with a negative prompt")
            kwargs.setdefault("num_images_per_prompt", call.num_images)
            kwargs["generator"] = make_generator(self.device, call.seed)
            reporter = _StepReporter(on_step, kwargs.get("num_inference_steps"))
            kwargs["callback_on_step_end"] = reporter
            kwargs["output_type"] = "pil"
            try:
                with self.execution(call), loras_applied(pipe, call.loras), self.accelerated(call.acceleration):
                    output = pipe(**kwargs)
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
            return EngineResult(images=images, info=info)

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
