"""The speed options of :class:`~imagegate.engines.options.EngineOptions`, applied to a loaded pipeline:
fused QKV projections, torchao fp8, regional ``torch.compile``, channels-last VAE, and TF32 through
torch's ``fp32_precision`` API.

Each is written to be right on CUDA by construction, since the CPU this project is tested on cannot
run most of it:

* TF32 is set per call through the current API only (never the legacy ``allow_tf32`` flags, which
  torch refuses to mix with it) and restored afterwards (:func:`fp32_precision`).
* fp8 is checked at load: the device, its compute capability against the recipe (row-wise scales need
  9.0), torchao, and one quantised layer run on the device (:func:`fp8_unavailable_reason`,
  :func:`fp8_probe`). An engine that cannot use it says why and serves bfloat16.
* Compilation is regional: each repeated block's ``forward`` is compiled, so hooks diffusers attaches
  to a block (First Block Cache) run eagerly around the compiled code instead of being traced.
  Every graph compiled is counted (:class:`CompileCounter`), and a region past torch's recompile
  limit raises :class:`RecompileLimitHit` instead of silently running eagerly.
* QKV fusion goes one attention module at a time, so the unfused copies are freed as it goes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from imagegate.engines.options import EngineOptions

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- TF32


@contextlib.contextmanager
def fp32_precision(tf32: bool) -> Iterator[None]:
    """float32 matmuls (cuBLAS) and cuDNN convolutions run in TF32 (``tf32=True``) or full IEEE float32
    for the duration; the previous settings come back afterwards.

    Only the ``fp32_precision`` API is used: torch raises when it is mixed with the legacy
    ``allow_tf32`` flags, and Inductor reads these same settings when it generates code.
    """
    value = "tf32" if tf32 else "ieee"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    previous = (matmul.fp32_precision, cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    matmul.fp32_precision = value
    # cuDNN's own setting (Inductor reads it) and its conv and rnn children, which keep a value once
    # set rather than follow it.
    cudnn.fp32_precision = cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = value
    try:
        yield
    finally:
        matmul.fp32_precision, cudnn.fp32_precision = previous[0], previous[1]
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = previous[2], previous[3]


# --------------------------------------------------------------------------- fused QKV


def fuse_qkv_projections(transformer: torch.nn.Module, on_fused: Callable[[torch.nn.Module], None] | None = None) -> int:
    """Fuse every attention's Q/K/V (and added-context Q/K/V) projections; returns how many modules.

    diffusers' ``fuse_qkv_projections`` fuses every module first and keeps the separate projections,
    which holds a second copy of all those weights (gigabytes for FLUX) at once. Here each module is
    fused and its separate projections immediately become views of the fused weight, so the unfused
    copies are freed one module at a time and memory never grows by more than one module's QKV. The
    unfused path (:func:`qkv_unfused`, used for LoRAs) still computes the same projections.
    ``on_fused(module)`` runs after each module (tests watch memory with it).
    """
    if not hasattr(transformer, "fuse_qkv_projections"):
        return 0
    from diffusers.models.attention import AttentionModuleMixin

    for processor in getattr(transformer, "attn_processors", {}).values():
        if "Added" in type(processor).__name__:
            raise ValueError("fuse_qkv_projections() is not supported for models having added KV projections.")
    fused = 0
    with torch.no_grad():
        for module in list(transformer.modules()):
            if not isinstance(module, AttentionModuleMixin) or not module._supports_qkv_fusion:
                continue
            module.fuse_projections()
            if not getattr(module, "fused_projections", False):
                continue
            fused += 1
            _alias_parts(module, "to_qkv", ("to_q", "to_k", "to_v"))
            _alias_parts(module, "to_kv", ("to_k", "to_v"))
            _alias_parts(module, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"))
            if on_fused is not None:
                on_fused(module)
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


# --------------------------------------------------------------------------- fp8

# Top-level submodules whose Linear layers fp8 leaves alone: the model's input and output projections
# (small, and the most sensitive to rounding) and the timestep / guidance embedders (one row each,
# nothing to gain). Blocks' own layers (a single-stream block's proj_out included) are quantised.
FP8_SKIP = ("x_embedder", "context_embedder", "img_in", "txt_in", "txt_norm", "proj_out", "norm_out",
            "time_text_embed", "time_guidance_embed")
# The recipe: float8 weights and activations with one scale per row, through torch._scaled_mm's
# row-wise kernels, which exist from compute capability 9.0 (Hopper) on. Ada (8.9) has fp8 tensor
# cores but no row-wise kernel, so the recipe is refused there rather than failing in a job.
FP8_RECIPE = "float8 dynamic activations and weights, per-row scales"
FP8_MIN_CAPABILITY = (9, 0)


def fp8_unavailable_reason(device: str = "cuda", capability: tuple[int, int] | None = None) -> str | None:
    """``None`` when the fp8 recipe can run on ``device``, otherwise why not, in words an operator can act
    on. ``capability`` stands for the device's compute capability (the GPU benchmark's plan asks about
    GPUs it is not running on)."""
    if torch.device(device).type != "cuda":
        return f"fp8 ({FP8_RECIPE}) needs a CUDA GPU; this engine runs on {device}"
    if capability is None:
        if not torch.cuda.is_available():
            return f"fp8 ({FP8_RECIPE}) needs a CUDA GPU and none is available"
        capability = torch.cuda.get_device_capability(torch.device(device))
    if tuple(capability) < FP8_MIN_CAPABILITY:
        need = ".".join(map(str, FP8_MIN_CAPABILITY))
        return (f"fp8 ({FP8_RECIPE}) needs compute capability {need} or newer (Hopper, Blackwell); "
                f"this GPU has {capability[0]}.{capability[1]}")
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return "fp8 needs torchao: install imagegate with its gpu extra (pip install 'imagegate[gpu]')"
    return None


def fp8_config() -> Any:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


@functools.lru_cache(maxsize=None)
def fp8_probe(device: str) -> str | None:
    """Quantise one small Linear layer with the recipe and run it on ``device``: a torchao, torch or
    driver that cannot run the fp8 kernels fails here, once per device, at load, not in a job."""
    try:
        from torchao.quantization import quantize_

        layer = torch.nn.Linear(256, 256, device=device, dtype=torch.bfloat16)
        quantize_(layer, fp8_config())
        with torch.no_grad():
            layer(torch.randn(32, 256, device=device, dtype=torch.bfloat16))
        torch.cuda.synchronize(torch.device(device))
    except Exception as exc:  # any failure means the recipe cannot serve here
        return f"fp8 kernels failed on {device}: {type(exc).__name__}: {exc}"
    return None


def quantize_fp8(transformer: torch.nn.Module) -> int:
    """The fp8 recipe on the transformer's Linear layers whose shapes the fp8 GEMM takes (both sides
    multiples of 16); returns how many."""
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

    quantize_(transformer, fp8_config(), filter_fn=wanted)
    _applied(transformer).add("fp8")
    return count


# --------------------------------------------------------------------------- compile


class CompileCounter:
    """A ``torch.compile`` backend that counts the graphs it compiles, then hands them to ``backend``.

    One per backend name for the whole process: Dynamo keeps compiled code per code object (every
    FLUX.1 checkpoint's blocks share theirs) and only reuses it under the same backend object, so
    sharing the counter lets every model reuse what another compiled for the same shapes.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.graphs = 0

    def __repr__(self) -> str:
        return f"CompileCounter({self.backend!r})"

    def __call__(self, graph_module: Any, example_inputs: Any) -> Any:
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        return lookup_backend(self.backend)(graph_module, example_inputs)


_COUNTERS: dict[str, CompileCounter] = {}


def compile_counter(backend: str) -> CompileCounter:
    return _COUNTERS.setdefault(backend, CompileCounter(backend))


class RecompileLimitHit(RuntimeError):
    """A compiled region needed more compilations than torch's ``recompile_limit`` allows."""


def is_compiled(module: Any) -> bool:
    """Whether ``module`` was compiled (its compiled code runs unless :func:`eager_execution`)."""
    return module is not None and "compile" in _applied(module)


def compile_failed(module: Any) -> bool:
    """Whether compiling ``module`` failed once; it then runs eagerly for good."""
    return module is not None and "compile_failed" in _applied(module)


def hit_recompile_limit(module: Any) -> bool:
    """Whether ``module`` hit torch's recompile limit; shapes it never compiled then run eagerly."""
    return module is not None and "recompile_limit" in _applied(module)


def compiled_graphs(module: Any) -> int:
    """Graphs compiled so far by the backend ``module`` was compiled with (0 if it was not)."""
    counter = getattr(module, "_imagegate_compile_counter", None)
    return counter.graphs if counter is not None else 0


def is_compile_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) comes from torch.compile's tracing or code generation."""
    while exc is not None:
        if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def compiled_regions(denoiser: Any) -> list[torch.nn.Module]:
    if denoiser is None:
        return []
    return [module for module in denoiser.modules() if "compiled_region" in _applied(module)]


def compile_denoiser(denoiser: torch.nn.Module, backend: str = "inductor") -> str:
    """Regional ``torch.compile`` of the transformer: each repeated block when diffusers names them (one
    compiled block serves all of them, so compiling takes seconds rather than minutes), else the whole
    model. Graph breaks are allowed. Lazy: the first call compiles. Returns which was done.

    The blocks' ``forward`` is what is compiled, not their ``__call__``: diffusers attaches cache
    hooks by replacing a module's ``forward``, so a hook on a block (First Block Cache's) wraps the
    compiled code and runs eagerly around it, where tracing it would recompile at every step.
    """
    if is_compiled(denoiser):
        return "already"
    counter = compile_counter(backend)
    names = set(getattr(denoiser, "_repeated_blocks", None) or ())
    regions = [module for module in denoiser.modules() if type(module).__name__ in names] or [denoiser]
    for region in regions:
        region.forward = torch.compile(region.forward, backend=counter)
        _applied(region).add("compiled_region")
    object.__setattr__(denoiser, "_imagegate_compile_counter", counter)
    _applied(denoiser).add("compile")
    return "whole model" if regions == [denoiser] else "repeated blocks"


def hooks_inside_compiled_regions(denoiser: Any) -> bool:
    """Whether diffusers hooks sit on modules inside a compiled region (TaylorSeer hooks each block's
    attention): the compiled code would trace them and recompile as their state changes."""
    for region in compiled_regions(denoiser):
        for name, module in region.named_modules():
            registry = getattr(module, "_diffusers_hook", None)
            if name and registry is not None and registry.hooks:
                return True
    return False


@contextlib.contextmanager
def eager_execution(active: bool = True) -> Iterator[None]:
    """Run compiled modules eagerly for the duration. Calls that change the transformer (LoRA layers,
    cache hooks inside the blocks, unfused projections) would otherwise recompile it, for tens of
    seconds each."""
    if not active:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


@contextlib.contextmanager
def compiled_execution(denoiser: Any) -> Iterator[None]:
    """Run ``denoiser``'s compiled regions. Until it hits torch's recompile limit a shape that would
    pass it raises :class:`RecompileLimitHit` (torch itself would silently fall back to eager); after
    that, shapes compiled before keep their code and new ones run eagerly, on purpose."""
    if hit_recompile_limit(denoiser):
        with torch.compiler.set_stance("eager_on_recompile"):
            yield
        return
    limit_error = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        try:
            yield
        except BaseException as exc:
            if limit_error is not None and _caused_by(exc, limit_error):
                _applied(denoiser).add("recompile_limit")
                raise RecompileLimitHit(f"torch.compile hit its recompile limit ({torch._dynamo.config.recompile_limit})") from exc
            raise


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# --------------------------------------------------------------------------- applying them


def _channels_last_ok(vae: torch.nn.Module) -> bool:
    return all(p.dim() != 5 for p in vae.parameters())


def apply_optimisations(
    pipe: Any, options: EngineOptions, *, device: str, qkv_fusion: bool = True, fp8: bool = True, compile: bool = True
) -> dict[str, str]:
    """Apply ``options`` to ``pipe`` (on ``device``) in place, idempotently: components may be
    shared with engines that applied them already. ``qkv_fusion``/``fp8``/``compile`` say whether the
    engine allows each. Returns each option's outcome: "on", "off" or "n/a: why". TF32 is not applied
    here but per call (:func:`fp32_precision`); the report says whether calls will use it."""
    report: dict[str, str] = {}
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    on_cuda = torch.device(device).type == "cuda"

    report["tf32"] = ("on" if on_cuda else "n/a: not CUDA") if options.tf32 else "off"

    quantised = False
    if options.fp8:
        why = None if fp8 else "this engine trains the weights"
        why = why or (None if denoiser is not None else "no transformer") or fp8_unavailable_reason(device)
        why = why or fp8_probe(device)
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
            report["fuse_qkv"] = "on" if fused or "fuse_qkv" in _applied(denoiser) else "n/a: nothing to fuse"
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
