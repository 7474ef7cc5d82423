"""GPU benchmark: one 1024x1024 image, end to end (text encoding, denoising, VAE decode, PIL), for
each architecture imagegate serves, at its real size with random weights, eager and with the speed
options imagegate ships (:class:`imagegate.engines.diffusers_base.EngineOptions`).

    .venv/bin/python benchmarks/gpu.py [--models flux1-schnell,flux1-dev,flux2-klein-4b,qwen-image]
                                       [--modes eager,fused,compile,fp8] [--runs 3] [--warmup 1]
                                       [--resolution 1024] [--offload-text-encoder auto|never|always]
    .venv/bin/python benchmarks/gpu.py --tiny --models flux1-schnell --runs 1   # CPU, tiny configs
    .venv/bin/python benchmarks/gpu.py --dry-run   # build the real configs on the meta device: sizes only

Nothing is downloaded. Every component is built from its published configuration (see the
``*_CONFIG`` dictionaries below, each with where it comes from) directly in bfloat16 on the GPU, so a
20B transformer needs its 40 GB once, not twice; the tokenizers are imagegate's tiny fixture
tokenizers (token ids only have to be inside the real vocabularies). The pipelines are wrapped in
the engine classes imagegate serves with and called the way the worker calls them, so the numbers are
those of the shipped code: the engine's defaults (guidance, sequence lengths, Qwen-Image's true CFG
with two transformer passes per step) and its optimisations, applied by ``engine.apply_options``.

Modes are cumulative, each measured on the same weights after the previous one:

* ``eager``: bf16, nothing else (``EngineOptions.eager()``);
* ``fused``: the engine defaults: fused QKV projections (FLUX.1, FLUX.2), channels-last VAE (2-D
  VAEs), TF32 for the remaining float32 matmuls;
* ``compile``: + ``torch.compile`` of the transformer's repeated blocks (regional compilation);
* ``fp8``: + torchao float8 dynamic quantisation of the transformer's Linear layers (replaces the
  QKV fusion); "n/a" without torchao or an fp8-capable GPU (compute capability 8.9+).

``seconds`` is the median of ``--runs`` timed calls after ``--warmup`` calls (``first call s`` is
the first warm-up call: compilation lands there), ``peak GiB`` is ``torch.cuda.max_memory_allocated``
over the timed calls (weights included), ``speed-up`` is eager seconds / mode seconds. A row that runs
out of memory prints ``OOM`` and the next row starts from freed memory.

Memory: Qwen-Image is a 20.4B transformer (38.1 GiB in bf16) plus an 8.3B Qwen2.5-VL text encoder
(15.4 GiB) and a 0.24 GiB VAE, 53.7 GiB of weights (``--dry-run`` prints every component): it fits an
80 GB H100 with its 1024x1024 activations, but only just. With ``--offload-text-encoder auto`` (the
default) a model that runs out of memory anywhere is measured again from scratch with its text
encoders in pinned host memory, copied to the GPU for each prompt encoding and dropped after it (about
16 GB of PCIe transfer, ~0.7 s, per Qwen-Image call, which its timings then include and its notes
say). ``always`` forces that; ``never`` prints the OOM rows.

``--tiny`` runs the same code path on the CPU, in float32, on imagegate's tiny fixture checkpoints
(``imagegate.fixtures``) at 64x64: it checks the script, not the speed. There ``compile`` uses
torch.compile's ``eager`` backend (the Dynamo path without code generation) and ``fp8`` is n/a.
"""

from __future__ import annotations

import os
import sys

# benchmarks/queue.py shadows the standard library's `queue` (which torch imports) when this folder is
# first on sys.path, as it is for a script run from here: take that entry out first.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import contextlib
import gc
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

PROMPT = "a photo of a red cat with a small black dog in the city at night, detailed, high quality"
MODES = ("eager", "fused", "compile", "fp8")
MODE_LABELS = {
    "eager": "eager",
    "fused": "+ fused QKV, channels-last VAE, TF32",
    "compile": "+ torch.compile",
    "fp8": "+ fp8 (torchao)",
}

# --------------------------------------------------------------------------- real configurations
#
# FLUX.1 [dev] / [schnell] transformer: diffusers' FluxTransformer2DModel defaults (patch 1,
# in_channels 64, 19 double + 38 single blocks, 24 heads x 128, joint_attention_dim 4096,
# pooled_projection_dim 768, rope axes (16, 56, 56)) are the published transformer/config.json of
# both; they match Black Forest Labs' reference FluxParams (black-forest-labs/flux src/flux/util.py:
# hidden 3072, depth 19 / 38, context_in_dim 4096, vec_in_dim 768, axes_dim [16, 56, 56]). The two
# differ only in guidance_embeds (dev: true, schnell: false).
FLUX1_TRANSFORMER_CONFIG: dict[str, Any] = {}
# text_encoder: openai/clip-vit-large-patch14's text tower (what src/flux/util.py load_clip uses).
FLUX1_CLIP_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
# text_encoder_2: google/t5-v1_1-xxl's encoder (src/flux/util.py load_t5); the same numbers as
# FLUX.1-dev's text_encoder_2/config.json, reproduced in kohya-ss/sd-scripts library/flux_utils.py.
FLUX1_T5_CONFIG = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
# vae: the reference AutoEncoderParams (ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 16,
# scale 0.3611, shift 0.1159) as diffusers' AutoencoderKL (FLUX.1's vae/config.json).
FLUX1_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False,
)
# scheduler_config.json of FLUX.1-dev (resolution-dependent shift) and FLUX.1-schnell (shift 1).
FLUX1_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)
FLUX1_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)

# FLUX.2 [klein] 4B transformer: diffusers scripts/convert_flux2_to_diffusers.py,
# get_flux2_transformer_config("klein-4b"), the config it writes as the checkpoint's
# transformer/config.json (5 double + 20 single blocks, 24 heads x 128, joint_attention_dim 7680 = 3
# stacked Qwen3-4B layers x 2560, no guidance embedding).
KLEIN4B_TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
# text_encoder: Qwen/Qwen3-4B (Qwen3ForCausalLM; FLUX.2 [klein] 4B's text_encoder/config.json).
KLEIN4B_TEXT_CONFIG = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
# vae: AutoencoderKLFlux2's defaults (32 latent channels, blocks 128/256/512/512, 2 layers each, 2x2
# patching), which the same conversion script instantiates unchanged for the published VAE.
KLEIN4B_VAE_CONFIG: dict[str, Any] = {}
FLUX2_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)

# Qwen-Image transformer: QwenImageTransformer2DModel's defaults, equal to Qwen/Qwen-Image's
# transformer/config.json (patch 2, in 64, out 16, 60 layers, 24 heads x 128, joint_attention_dim
# 3584, rope axes (16, 56, 56)): 20.43B parameters.
QWEN_TRANSFORMER_CONFIG: dict[str, Any] = {}
# text_encoder: Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image's text_encoder/config.json): text tower 28
# layers x 3584, 28 heads / 4 KV heads, MLP 18944, vocab 152064, mRoPE sections (16, 24, 24); vision
# tower 32 blocks x 1280 (MLP 3420, 16 heads), merged to 3584.
QWEN_TEXT_CONFIG = dict(
    text_config=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default"},
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2, in_channels=3, hidden_act="silu",
    ),
)
# vae: AutoencoderKLQwenImage's defaults, equal to Qwen/Qwen-Image's vae/config.json (base_dim 96,
# z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks, latent mean/std).
QWEN_VAE_CONFIG: dict[str, Any] = {}
# Qwen-Image's scheduler_config.json.
QWEN_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)


# --------------------------------------------------------------------------- model builders


@dataclass
class Build:
    """A model's parts: ``parts`` builds each component (modules under the caller's device/dtype),
    ``text_encoders`` names the ones ``--offload-text-encoder`` may keep in host memory."""

    pipeline_class: type
    parts: dict[str, Callable[[], Any]]
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    text_encoders: tuple[str, ...] = ()


def _scheduler(config: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(**config)

    return build


def _flux1(guidance: bool) -> Build:
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from imagegate.fixtures.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    clip = CLIPTextConfig(
        **FLUX1_CLIP_CONFIG,
        # CLIP pools at the first EOS; the tiny tokenizer's ids (all inside the real vocabulary).
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Build(
        FluxPipeline,
        {
            "scheduler": _scheduler(FLUX1_DEV_SCHEDULER if guidance else FLUX1_SCHNELL_SCHEDULER),
            "tokenizer": lambda: tokenizer,
            "tokenizer_2": lambda: tokenizer_2,
            "text_encoder": lambda: CLIPTextModel(clip).eval(),
            "text_encoder_2": lambda: T5EncoderModel(T5Config(**FLUX1_T5_CONFIG)).eval(),
            "vae": lambda: AutoencoderKL(**FLUX1_VAE_CONFIG).eval(),
            "transformer": lambda: FluxTransformer2DModel(**FLUX1_TRANSFORMER_CONFIG, guidance_embeds=guidance).eval(),
        },
        text_encoders=("text_encoder", "text_encoder_2"),
    )


def _flux2_klein_4b() -> Build:
    from diffusers import (
        AutoencoderKLFlux2,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from imagegate.fixtures.flux2 import QWEN3_CHAT_TEMPLATE
    from imagegate.fixtures.tokenizers import tiny_qwen2_tokenizer

    tokenizer = tiny_qwen2_tokenizer(
        chat_template=QWEN3_CHAT_TEMPLATE, extra_special_tokens=("<think>", "</think>"), model_max_length=40960
    )
    text = Qwen3Config(
        **KLEIN4B_TEXT_CONFIG, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Build(
        Flux2KleinPipeline,
        {
            "scheduler": _scheduler(FLUX2_SCHEDULER),
            "tokenizer": lambda: tokenizer,
            "text_encoder": lambda: Qwen3ForCausalLM(text).eval(),
            "vae": lambda: AutoencoderKLFlux2(**KLEIN4B_VAE_CONFIG).eval(),
            "transformer": lambda: Flux2Transformer2DModel(**KLEIN4B_TRANSFORMER_CONFIG).eval(),
        },
        pipeline_kwargs={"is_distilled": True},  # FLUX.2-klein-4B is the step-distilled checkpoint
        text_encoders=("text_encoder",),
    )


def _qwen_image() -> Build:
    from diffusers import (
        AutoencoderKLQwenImage,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from imagegate.fixtures.tokenizers import tiny_qwen2_tokenizer

    tokenizer = tiny_qwen2_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(QWEN_TEXT_CONFIG["text_config"], bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=QWEN_TEXT_CONFIG["vision_config"],
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Build(
        QwenImagePipeline,
        {
            "scheduler": _scheduler(QWEN_SCHEDULER),
            "tokenizer": lambda: tokenizer,
            "text_encoder": lambda: Qwen2_5_VLForConditionalGeneration(config).eval(),
            "vae": lambda: AutoencoderKLQwenImage(**QWEN_VAE_CONFIG).eval(),
            "transformer": lambda: QwenImageTransformer2DModel(**QWEN_TRANSFORMER_CONFIG).eval(),
        },
        text_encoders=("text_encoder",),
    )


def _tiny(pipeline_class: type, build_dir: Callable[[Path], Path], **pipeline_kwargs: Any) -> Callable[[], Build]:
    """A tiny fixture checkpoint, built and loaded back: the components the tests serve."""

    def build() -> Build:
        with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as root:
            pipe = pipeline_class.from_pretrained(build_dir(Path(root)), dtype=torch.float32)
        components = {k: v for k, v in pipe.components.items() if k in pipe._get_signature_keys(pipe)[0]}
        parts = {name: (lambda c=component: c) for name, component in components.items()}
        return Build(pipeline_class, parts, pipeline_kwargs)

    return build


def _tiny_builds() -> dict[str, Callable[[], Build]]:
    from diffusers import Flux2KleinPipeline, FluxPipeline, QwenImagePipeline

    from imagegate.fixtures.flux1 import build_flux1
    from imagegate.fixtures.flux2 import build_flux2_klein
    from imagegate.fixtures.qwen_image import build_qwen_image

    return {
        "flux1-schnell": _tiny(FluxPipeline, lambda root: build_flux1(root, guidance_embeds=False)),
        "flux1-dev": _tiny(FluxPipeline, lambda root: build_flux1(root)),
        "flux2-klein-4b": _tiny(Flux2KleinPipeline, lambda root: build_flux2_klein(root, distilled=True), is_distilled=True),
        "qwen-image": _tiny(QwenImagePipeline, build_qwen_image),
    }


@dataclass(frozen=True)
class Model:
    key: str
    title: str
    steps: int
    engine: str  # "module:Class" of the imagegate engine that serves it
    real: Callable[[], Build]
    notes: str = ""


MODELS: dict[str, Model] = {
    m.key: m
    for m in (
        Model("flux1-schnell", "FLUX.1 [schnell]", 4, "imagegate.engines.flux1:Flux1TextToImage", lambda: _flux1(False)),
        Model("flux1-dev", "FLUX.1 [dev]", 28, "imagegate.engines.flux1:Flux1TextToImage", lambda: _flux1(True)),
        Model("flux2-klein-4b", "FLUX.2 [klein] 4B", 4, "imagegate.engines.flux2:Flux2KleinTextToImage", _flux2_klein_4b),
        Model("qwen-image", "Qwen-Image", 20, "imagegate.engines.qwen_image:QwenImageTextToImage", _qwen_image,
              notes="true CFG: 2 passes/step"),
    )
}


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors are created directly on ``device`` in ``dtype``: no float32 copy on the way."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


class HostOffload:
    """Keep a module's weights in pinned host memory and on the GPU only while it runs."""

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        self.device = torch.device(device)
        self.tensors = [t for t in list(module.parameters()) + list(module.buffers())]
        for tensor in self.tensors:
            host = tensor.data.to("cpu")
            tensor.data = host.pin_memory() if torch.cuda.is_available() else host
        self.host = [t.data for t in self.tensors]
        module.register_forward_pre_hook(self.load)
        module.register_forward_hook(self.drop)

    def load(self, *_: Any) -> None:
        for tensor, host in zip(self.tensors, self.host):
            tensor.data = host.to(self.device, non_blocking=True)

    def drop(self, *_: Any) -> None:
        for tensor, host in zip(self.tensors, self.host):
            tensor.data = host


def build_pipeline(build: Build, device: str, dtype: torch.dtype, offload: bool) -> Any:
    """The pipeline from freshly built parts; with ``offload`` the text encoders stay in pinned host
    memory (see :class:`HostOffload`)."""
    components: dict[str, Any] = {}
    for name, make in build.parts.items():
        on_host = offload and name in build.text_encoders
        with building("cpu" if on_host else device, dtype):
            component = make()
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
            if on_host:
                HostOffload(component, device)
        components[name] = component
    pipe = build.pipeline_class(**components, **build.pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(build: Build) -> dict[str, int]:
    """Parameters of each module component, built on the meta device (no memory)."""
    counts = {}
    for name, make in build.parts.items():
        if name in ("scheduler",) or name.startswith("tokenizer"):
            continue
        with building("meta", torch.bfloat16):
            component = make()
        if isinstance(component, torch.nn.Module):
            counts[name] = sum(p.numel() for p in component.parameters())
    return counts


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    model: str
    steps: int
    mode: str
    seconds: float | None = None
    peak_bytes: int | None = None
    first_call: float | None = None
    speedup: float | None = None
    status: str = ""  # "", "OOM", "n/a", "error"
    notes: list[str] = field(default_factory=list)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _is_oom(exc: BaseException) -> bool:
    from imagegate.engines.diffusers_base import is_out_of_memory

    while exc is not None:
        if is_out_of_memory(exc) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__
    return False


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(engine: Any, call: Any, device: str, warmup: int, runs: int) -> tuple[float, float, int | None]:
    """(median seconds, first call seconds, peak bytes) of ``engine(call)``."""
    noop = lambda step, total: None
    first = 0.0
    for index in range(max(warmup, 0)):
        _sync(device)
        started = time.perf_counter()
        engine(call, noop)
        _sync(device)
        if index == 0:
            first = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(runs, 1)):
        _sync(device)
        started = time.perf_counter()
        engine(call, noop)
        _sync(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return statistics.median(times), first or times[0], peak


def mode_options(mode: str, tiny: bool) -> Any:
    from imagegate.engines.diffusers_base import EngineOptions

    backend = "eager" if tiny else "inductor"
    return {
        "eager": EngineOptions.eager(),
        "fused": EngineOptions(compile_backend=backend),
        "compile": EngineOptions(compile=True, compile_backend=backend),
        "fp8": EngineOptions(compile=True, fp8=True, compile_backend=backend),
    }[mode]


def _engine_class(path: str) -> type:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_model(model: Model, args: argparse.Namespace, tiny_builds: dict[str, Callable[[], Build]] | None) -> list[Row]:
    """All modes of one model. With ``--offload-text-encoder auto``, a model that runs out of memory
    anywhere is measured again from scratch with its text encoders in host memory."""
    offload = args.offload_text_encoder == "always"
    rows = _run_once(model, args, tiny_builds, offload)
    can_offload = args.offload_text_encoder == "auto" and not offload and not args.tiny
    if can_offload and any(row.status == "OOM" for row in rows):
        rows = _run_once(model, args, tiny_builds, True)
    return rows


def _run_once(
    model: Model, args: argparse.Namespace, tiny_builds: dict[str, Callable[[], Build]] | None, offload: bool
) -> list[Row]:
    from imagegate.engines.base import EngineCall
    from imagegate.engines.diffusers_base import EngineOptions, fp8_unavailable_reason

    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    modes = [m for m in args.modes if m in MODES]
    rows = [Row(model.title, model.steps, MODE_LABELS[m]) for m in modes]
    notes = [model.notes] if model.notes else []
    if offload:
        notes.append("text encoder in host memory")

    engine = None
    try:
        build = tiny_builds[model.key]() if tiny_builds else model.real()
        pipe = build_pipeline(build, device, dtype, offload and bool(build.text_encoders))
        engine = _engine_class(model.engine)(
            pipe, device=device, dtype=dtype, model_id=model.key, options=EngineOptions.eager()
        )
        del pipe  # the engine holds it
    except Exception as exc:  # noqa: BLE001 - a row per failure, the benchmark goes on
        status = "OOM" if _is_oom(exc) else "error"
        for row in rows:
            row.status, row.notes = status, notes + [f"build: {type(exc).__name__}: {exc}"[:160]]
        if args.verbose and status == "error":
            traceback.print_exc()
        engine = None
        _free()
        return rows

    call = EngineCall(
        task="text-to-image", prompt=PROMPT, width=args.resolution, height=args.resolution,
        num_inference_steps=model.steps, seed=0,
    )
    eager_seconds = None
    try:
        for row, mode in zip(rows, modes):
            row.notes = list(notes)
            if mode == "fp8" and args.tiny:
                row.status, row.notes = "n/a", row.notes + ["fp8: needs a CUDA GPU"]
                continue
            if mode == "fp8" and (why := fp8_unavailable_reason()):
                row.status, row.notes = "n/a", row.notes + [f"fp8: {why}"]
                continue
            try:
                if mode == "fp8":
                    torch._dynamo.reset()  # recompile against the fp8 weights
                report = engine.apply_options(mode_options(mode, args.tiny))
                row.notes += [f"{k}: {v}" for k, v in report.items() if v.startswith("n/a")]
                warmup = max(args.warmup, 1) if mode in ("compile", "fp8") else args.warmup
                row.seconds, row.first_call, row.peak_bytes = measure(engine, call, device, warmup, args.runs)
                if mode == "eager":
                    eager_seconds = row.seconds
                if eager_seconds:
                    row.speedup = eager_seconds / row.seconds
            except Exception as exc:  # noqa: BLE001
                row.status = "OOM" if _is_oom(exc) else "error"
                if row.status == "error":
                    row.notes.append(f"{type(exc).__name__}: {exc}"[:160])
                    if args.verbose:
                        traceback.print_exc()
                _free()
    finally:
        if engine is not None:
            engine.unload()
        engine = None
        torch._dynamo.reset()
        _free()
    return rows


# --------------------------------------------------------------------------- output


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | steps | mode | seconds | peak GPU GiB | speed-up | first call s | notes |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.status:
            seconds = peak = speedup = first = row.status
        else:
            seconds = f"{row.seconds:.3f}"
            peak = f"{row.peak_bytes / 2**30:.1f}" if row.peak_bytes is not None else "-"
            speedup = f"{row.speedup:.2f}x" if row.speedup else "-"
            first = f"{row.first_call:.1f}"
        lines.append(
            f"| {row.model} | {row.steps} | {row.mode} | {seconds} | {peak} | {speedup} | {first} | "
            f"{'; '.join(row.notes)} |"
        )
    return "\n".join(lines)


def dry_run(models: Sequence[Model]) -> str:
    lines = ["| model | component | parameters | bf16 GiB |", "|---|---|---:|---:|"]
    for model in models:
        counts = parameter_counts(model.real())
        for name, count in counts.items():
            lines.append(f"| {model.title} | {name} | {count / 1e9:.3f} B | {count * 2 / 2**30:.2f} |")
        total = sum(counts.values())
        lines.append(f"| {model.title} | **total** | {total / 1e9:.3f} B | {total * 2 / 2**30:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before them (at least 1 when compiling)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--offload-text-encoder", choices=("auto", "never", "always"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny fixture configs on the CPU in float32")
    parser.add_argument("--dry-run", action="store_true", help="real configs on the meta device: parameter counts only")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed rows")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s): {', '.join(bad)}")
    if args.resolution is None:
        args.resolution = 64 if args.tiny else 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [MODELS[key] for key in args.models]
    if args.dry_run:
        print(dry_run(models))
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or use --tiny (CPU, tiny configs) or --dry-run", file=sys.stderr)
        return 2
    if not args.tiny:
        # The eager baseline runs without TF32; the "fused" mode turns it on (process-wide).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name()
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(f"device: {name} ({total:.0f} GiB), torch {torch.__version__}")
    tiny_builds = _tiny_builds() if args.tiny else None
    rows: list[Row] = []
    for model in models:
        rows += run_model(model, args, tiny_builds)
    print(f"{args.resolution}x{args.resolution}, prompt {PROMPT!r}, median of {args.runs} after {args.warmup} warm-up")
    print(table(rows))
    return 0 if all(row.status in ("", "n/a", "OOM") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
