"""GPU benchmark: every model family imagegate serves, at its real size with random weights, through the
engine classes that serve it, at the step counts the endpoints serve by default.

    .venv/bin/python benchmarks/gpu.py --plan                # CPU: sizes, memory plan, time plan
    .venv/bin/python benchmarks/gpu.py --tiny [--part all]   # CPU rehearsal: tiny fixtures, 64x64
    python3 benchmarks/gpu.py --part 1 --out DIR [--deadline-s 480]   # on the GPU (gpu_session.sh)

Nothing is downloaded. Every component is built from its published configuration (the ``*_CONFIG``
dictionaries below, each with where it comes from) directly in bfloat16 on the GPU, with random
weights; the tokenizers are imagegate's tiny fixture tokenizers (token ids only have to be inside the
real vocabularies). Timing does not depend on the weights' values, with one exception: how often a
step cache skips work depends on how the model's activations evolve, so the cache rows' speed-ups
(and every row's image difference from the reference) are those of random weights, not of the
published checkpoints.

A row is one model with one set of :class:`~imagegate.engines.options.EngineOptions` (and cache
level). Per row: the first call (``torch.compile`` compiles there), then ``--warmup`` (>= 2) untimed
and ``--runs`` (>= 10) timed calls at 1024x1024, batch 1: p50 and p90 of the end-to-end time (the
pipeline call plus encoding and storing the image the way the worker does), a per-stage split from CUDA
events (text encoding, one denoising step, VAE decode, encode and store), peak allocated and reserved
GPU memory, and, for rows marked so, images/s at batch 4 (1 warm-up and 2 timed calls). Each model
first runs one bf16 call with every option off: its output is the reference the lossy rows (fp8, step
caches) are compared with (PSNR, dB; inf = identical).

Rows of one model run on the same weights, in order, each adding options to the previous ones (options
only add), so the FLUX.1 [schnell] rows are an ablation that changes one option at a time: eager, + fused
QKV, + channels-last VAE, + TF32 (the served defaults), + fp8, + compile. The other families run the
fastest configuration (defaults + fp8 + compile), FLUX.1 [dev] also with each step cache.

Parts, each sized by ``--plan`` to one GPU window of 9 minutes: ``--part 1`` holds the rows the targets
are about (FLUX.1 [schnell] and [dev], FLUX.2 [klein] 4B, Real-ESRGAN), ``--part 2`` FLUX.2 [klein] at
25 steps and FLUX.1 Fill and Kontext, ``--part 3`` FLUX.2 [dev] and Qwen-Image, ``--part 4``
Qwen-Image-Edit. With a deadline a row that would not finish in time is listed as not run instead of
overrunning the window.
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
import json
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from PIL import Image

from imagegate.engines.base import RESTORE_PROMPT, EngineCall, Flux2Options, UpscaleOptions
from imagegate.engines.options import EngineOptions

PROMPT = "a photo of a red cat with a small black dog in the city at night, detailed, high quality"
SIDE, TINY_SIDE = 1024, 64

# --------------------------------------------------------------------------- real configurations
#
# FLUX.1 [dev] / [schnell] / Kontext transformer: diffusers' FluxTransformer2DModel defaults (patch 1,
# in_channels 64, 19 double + 38 single blocks, 24 heads x 128, joint_attention_dim 4096,
# pooled_projection_dim 768, rope axes (16, 56, 56)) are the published transformer/config.json of each;
# they match Black Forest Labs' reference FluxParams (black-forest-labs/flux src/flux/util.py). They
# differ only in guidance_embeds (schnell: false).
FLUX1_TRANSFORMER_CONFIG: dict[str, Any] = {}
# FLUX.1 Fill [dev]: the same transformer reading 384 input channels (64 noisy + 64 masked-image + 256
# mask channels after packing) and writing 64 (FLUX.1-Fill-dev transformer/config.json).
FLUX1_FILL_TRANSFORMER_CONFIG = dict(in_channels=384, out_channels=64)
# text_encoder: openai/clip-vit-large-patch14's text tower (what src/flux/util.py load_clip uses).
FLUX1_CLIP_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
# text_encoder_2: google/t5-v1_1-xxl's encoder (src/flux/util.py load_t5); the same numbers as
# FLUX.1-dev's text_encoder_2/config.json.
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
# get_flux2_transformer_config("klein-4b") (5 double + 20 single blocks, 24 heads x 128,
# joint_attention_dim 7680 = 3 stacked Qwen3-4B layers x 2560, no guidance embedding).
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
# patching), which the same conversion script instantiates unchanged for the published VAE (shared by
# FLUX.2 [dev] and [klein]).
FLUX2_VAE_CONFIG: dict[str, Any] = {}
FLUX2_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)
# FLUX.2 [dev] transformer: Flux2Transformer2DModel's defaults, the same script's "dev" config (8 double
# + 48 single blocks, 48 heads x 128, joint_attention_dim 15360 = 3 stacked Mistral layers x 5120,
# guidance embedding): 32B parameters.
FLUX2_DEV_TRANSFORMER_CONFIG: dict[str, Any] = {}
# text_encoder: mistralai/Mistral-Small-3.1-24B-Instruct-2503 (Mistral3ForConditionalGeneration;
# FLUX.2-dev's text_encoder/config.json): text 40 layers x 5120, 32 heads / 8 KV heads of 128, MLP
# 32768, vocab 131072; Pixtral vision tower 24 layers x 1024 (MLP 4096, 16 heads), patch 14, image 1540.
FLUX2_DEV_TEXT_CONFIG = dict(
    text_config=dict(
        vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=1_000_000_000.0,
        rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
    ),
    vision_config=dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, head_dim=64,
        image_size=1540, patch_size=14, num_channels=3, rope_theta=10000.0,
    ),
    multimodal_projector_bias=False, projector_hidden_act="gelu", spatial_merge_size=2, vision_feature_layer=-1,
    tie_word_embeddings=False,
)

# Qwen-Image transformer: QwenImageTransformer2DModel's defaults, equal to Qwen/Qwen-Image's
# transformer/config.json (patch 2, in 64, out 16, 60 layers, 24 heads x 128, joint_attention_dim
# 3584, rope axes (16, 56, 56)): 20.43B parameters. Qwen-Image-Edit-2509 has the same transformer.
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

# Published sizes the meta-device builds are checked against (tests/engines/test_gpu_benchmark.py), in
# parameters: model cards and the configs above.
PUBLISHED_PARAMETERS: dict[str, float] = {
    "FLUX.1 transformer": 11.9e9,
    "T5-XXL encoder": 4.76e9,
    "CLIP-L text encoder": 0.123e9,
    "FLUX.2 [klein] 4B transformer": 3.88e9,
    "Qwen3-4B": 4.02e9,
    "FLUX.2 [dev] transformer": 32e9,
    "Mistral Small 3.1": 24e9,
    "Qwen-Image transformer": 20.43e9,
    "Qwen2.5-VL-7B": 8.29e9,
}


# --------------------------------------------------------------------------- model builders


@dataclass
class Build:
    """A model's parts: ``parts`` builds each component (modules under the caller's device/dtype);
    ``published`` names a component's published size (a key of PUBLISHED_PARAMETERS); ``text_encoders``
    are the components an offloading plan keeps in host memory."""

    pipeline_class: type
    parts: dict[str, Callable[[], Any]]
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    text_encoders: tuple[str, ...] = ()
    published: dict[str, str] = field(default_factory=dict)


def _scheduler(config: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(**config)

    return build


def _flux1(pipeline: str, *, guidance: bool = True, transformer: dict[str, Any] | None = None) -> Build:
    import diffusers
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from imagegate.fixtures.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    clip = CLIPTextConfig(
        **FLUX1_CLIP_CONFIG,
        # CLIP pools at the first EOS; the tiny tokenizer's ids (all inside the real vocabulary).
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = {**FLUX1_TRANSFORMER_CONFIG, **(transformer or {}), "guidance_embeds": guidance}
    return Build(
        getattr(diffusers, pipeline),
        {
            "scheduler": _scheduler(FLUX1_DEV_SCHEDULER if guidance else FLUX1_SCHNELL_SCHEDULER),
            "tokenizer": lambda: tokenizer,
            "tokenizer_2": lambda: tokenizer_2,
            "text_encoder": lambda: CLIPTextModel(clip).eval(),
            "text_encoder_2": lambda: T5EncoderModel(T5Config(**FLUX1_T5_CONFIG)).eval(),
            "vae": lambda: AutoencoderKL(**FLUX1_VAE_CONFIG).eval(),
            "transformer": lambda: FluxTransformer2DModel(**config).eval(),
        },
        text_encoders=("text_encoder", "text_encoder_2"),
        published={"transformer": "FLUX.1 transformer", "text_encoder_2": "T5-XXL encoder",
                   "text_encoder": "CLIP-L text encoder"},
    )


def _flux2_klein_4b() -> Build:
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
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
            "vae": lambda: AutoencoderKLFlux2(**FLUX2_VAE_CONFIG).eval(),
            "transformer": lambda: Flux2Transformer2DModel(**KLEIN4B_TRANSFORMER_CONFIG).eval(),
        },
        pipeline_kwargs={"is_distilled": True},  # FLUX.2-klein-4B is the step-distilled checkpoint
        text_encoders=("text_encoder",),
        published={"transformer": "FLUX.2 [klein] 4B transformer", "text_encoder": "Qwen3-4B"},
    )


def _flux2_dev() -> Build:
    from diffusers import AutoencoderKLFlux2, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    from imagegate.engines.processors import TextOnlyProcessor
    from imagegate.fixtures.flux2 import tiny_mistral_tokenizer

    tokenizer = tiny_mistral_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = MistralConfig(**FLUX2_DEV_TEXT_CONFIG["text_config"], pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = Mistral3Config(
        text_config=text, vision_config=PixtralVisionConfig(**FLUX2_DEV_TEXT_CONFIG["vision_config"]),
        image_token_index=ids("[IMG]"),
        **{k: v for k, v in FLUX2_DEV_TEXT_CONFIG.items() if k not in ("text_config", "vision_config")},
    )
    return Build(
        Flux2Pipeline,
        {
            "scheduler": _scheduler(FLUX2_SCHEDULER),
            "tokenizer": lambda: TextOnlyProcessor(tokenizer, chat_template=tokenizer.chat_template),
            "text_encoder": lambda: Mistral3ForConditionalGeneration(config).eval(),
            "vae": lambda: AutoencoderKLFlux2(**FLUX2_VAE_CONFIG).eval(),
            "transformer": lambda: Flux2Transformer2DModel(**FLUX2_DEV_TRANSFORMER_CONFIG).eval(),
        },
        text_encoders=("text_encoder",),
        published={"transformer": "FLUX.2 [dev] transformer", "text_encoder": "Mistral Small 3.1"},
    )


def _qwen_image(edit: bool = False) -> Build:
    from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline, QwenImagePipeline, QwenImageTransformer2DModel
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
    parts: dict[str, Callable[[], Any]] = {
        "scheduler": _scheduler(QWEN_SCHEDULER),
        "tokenizer": lambda: tokenizer,
        "text_encoder": lambda: Qwen2_5_VLForConditionalGeneration(config).eval(),
        "vae": lambda: AutoencoderKLQwenImage(**QWEN_VAE_CONFIG).eval(),
        "transformer": lambda: QwenImageTransformer2DModel(**QWEN_TRANSFORMER_CONFIG).eval(),
    }
    if edit:
        parts["processor"] = lambda: _qwen2vl_processor(tokenizer)
    return Build(
        QwenImageEditPlusPipeline if edit else QwenImagePipeline,
        parts,
        text_encoders=("text_encoder",),
        published={"transformer": "Qwen-Image transformer", "text_encoder": "Qwen2.5-VL-7B"},
    )


def _qwen2vl_processor(tokenizer: Any) -> Any:
    from imagegate.engines.processors import ImageOnlyQwen2VLProcessor

    try:  # transformers >= 5.2x: the PIL image processor needs no torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:
        from transformers import Qwen2VLImageProcessor as Processor
    return ImageOnlyQwen2VLProcessor(Processor(), tokenizer)


def _tiny(pipeline: str, build_dir: Callable[[Path], Path], loader: Callable[[str], dict[str, Any]] | None = None,
          **pipeline_kwargs: Any) -> Callable[[], Build]:
    """A tiny fixture checkpoint, built and loaded back the way the engines load it (``loader`` builds
    the components the engine builds itself: FLUX.2 [dev]'s tokenizer, Qwen-Image-Edit's processor)."""

    def build() -> Build:
        import diffusers

        from imagegate.engines.diffusers_base import load_pipeline

        pipeline_class = getattr(diffusers, pipeline)
        with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as root:
            pipe = load_pipeline(pipeline_class, str(build_dir(Path(root))), device="cpu", dtype=torch.float32,
                                 component_loader=loader)
        components = {k: v for k, v in pipe.components.items() if k in pipe._get_signature_keys(pipe)[0]}
        parts = {name: (lambda c=component: c) for name, component in components.items()}
        return Build(pipeline_class, parts, pipeline_kwargs)

    return build


def _engine_components(family: str) -> Callable[[str], dict[str, Any]]:
    def load(source: str) -> dict[str, Any]:
        from imagegate.engines.processors import pixtral_tokenizer, qwen2vl_processor

        return (pixtral_tokenizer if family == "flux2" else qwen2vl_processor)(source)

    return load


def _fixture(name: str, **options: Any) -> Callable[[Path], Path]:
    """A builder of imagegate's tiny fixture ``name`` (``imagegate.fixtures.BUILDERS``)."""

    def build(root: Path) -> Path:
        import importlib

        from imagegate.fixtures import BUILDERS

        module, _, function = BUILDERS[name].partition(":")
        return getattr(importlib.import_module(module), function)(root, **options)

    return build


# --------------------------------------------------------------------------- models and rows


def _photo(side: int) -> Image.Image:
    """An input picture: smooth gradients plus seeded noise (never a constant image)."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, side, dtype=np.float32)
    base = np.stack([x[None, :].repeat(side, 0), x[::-1, None].repeat(side, 1), np.full((side, side), 90.0)], 2)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def _mask(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    return mask


@dataclass(frozen=True)
class Model:
    key: str
    title: str
    engine: str  # "module:Class" of the imagegate engine that serves it
    real: Callable[[], Build] | None
    tiny: Callable[[], Callable[[], Build]] | None
    call: Callable[[int], EngineCall]  # side -> the endpoint's default call at that size
    steps: int
    output_format: str  # the endpoint's default output format
    notes: str = ""


def _tiny_klein() -> Callable[[], Build]:
    return _tiny("Flux2KleinPipeline", _fixture("tiny-flux2-klein", distilled=True), is_distilled=True)


def _t2i(steps: int, guidance: float, **extra: Any) -> Callable[[int], EngineCall]:
    return lambda side: EngineCall(task="text-to-image", prompt=PROMPT, width=side, height=side,
                                   num_inference_steps=steps, guidance_scale=guidance, **extra)


MODELS: dict[str, Model] = {
    m.key: m
    for m in (
        Model("flux1-schnell", "FLUX.1 [schnell]", "imagegate.engines.flux1:Flux1TextToImage",
              lambda: _flux1("FluxPipeline", guidance=False),
              lambda: _tiny("FluxPipeline", _fixture("tiny-flux1", guidance_embeds=False)),
              _t2i(4, 0.0), 4, "png"),
        Model("flux1-dev", "FLUX.1 [dev]", "imagegate.engines.flux1:Flux1TextToImage",
              lambda: _flux1("FluxPipeline"), lambda: _tiny("FluxPipeline", _fixture("tiny-flux1")),
              _t2i(28, 3.5), 28, "jpeg"),
        Model("flux1-fill", "FLUX.1 Fill [dev]", "imagegate.engines.flux1:Flux1Fill",
              lambda: _flux1("FluxFillPipeline", transformer=FLUX1_FILL_TRANSFORMER_CONFIG),
              lambda: _tiny("FluxFillPipeline", _fixture("tiny-flux1-fill")),
              lambda side: EngineCall(task="inpaint", prompt=PROMPT, images=[_photo(side)], mask=_mask(side),
                                      width=side, height=side, num_inference_steps=28, guidance_scale=30.0),
              28, "webp"),
        Model("flux1-kontext", "FLUX.1 Kontext [dev] restore", "imagegate.engines.flux1:Flux1Kontext",
              lambda: _flux1("FluxKontextPipeline"), lambda: _tiny("FluxKontextPipeline", _fixture("tiny-flux1-kontext")),
              lambda side: EngineCall(task="restore", prompt=RESTORE_PROMPT, images=[_photo(side)], width=side,
                                      height=side, num_inference_steps=28, guidance_scale=2.5),
              28, "png", "reference tokens double the sequence"),
        Model("flux2-klein-4b", "FLUX.2 [klein] 4B", "imagegate.engines.flux2:Flux2KleinTextToImage",
              _flux2_klein_4b,
              _tiny_klein,
              _t2i(4, 1.0), 4, "png", "4 steps: p-image's turbo schedule"),
        Model("flux2-klein-4b-25", "FLUX.2 [klein] 4B", "imagegate.engines.flux2:Flux2KleinTextToImage",
              _flux2_klein_4b,
              _tiny_klein,
              _t2i(25, 1.0), 25, "png", "/flux-2-klein-4b's default 25 steps"),
        Model("p-image", "FLUX.2 [klein] 4B edit (p-image)", "imagegate.engines.flux2:Flux2KleinEdit",
              _flux2_klein_4b,
              _tiny_klein,
              lambda side: EngineCall(task="edit", prompt=PROMPT, images=[_photo(side)], width=side, height=side,
                                      guidance_scale=1.0, options=Flux2Options(turbo=True)),
              4, "jpeg", "1 reference image"),
        Model("flux2-dev", "FLUX.2 [dev]", "imagegate.engines.flux2:Flux2TextToImage",
              _flux2_dev, lambda: _tiny("Flux2Pipeline", _fixture("tiny-flux2"), _engine_components("flux2")),
              _t2i(28, 4.0), 28, "png"),
        Model("qwen-image", "Qwen-Image (boogu-image)", "imagegate.engines.qwen_image:QwenImageTextToImage",
              _qwen_image, lambda: _tiny("QwenImagePipeline", _fixture("tiny-qwen-image")),
              _t2i(30, 4.0), 30, "jpeg", "true CFG: 2 passes/step"),
        Model("qwen-image-edit", "Qwen-Image-Edit (boogu-image-edit)", "imagegate.engines.qwen_image:QwenImageEdit",
              lambda: _qwen_image(edit=True),
              lambda: _tiny("QwenImageEditPlusPipeline", _fixture("tiny-qwen-image-edit"), _engine_components("qwen")),
              lambda side: EngineCall(task="edit", prompt=PROMPT, images=[_photo(side)], width=side, height=side,
                                      num_inference_steps=30, guidance_scale=4.0),
              30, "jpeg", "true CFG: 2 passes/step; reference latents"),
        Model("realesrgan", "Real-ESRGAN x4plus (p-image-upscale)", "imagegate.engines.upscaler:RealEsrganUpscaler",
              None, None,
              lambda side: EngineCall(task="upscale", images=[_photo(side)], options=UpscaleOptions()),
              1, "jpeg", "ncnn on Vulkan; 4 MP target"),
    )
}

OFF = EngineOptions.eager()
FUSED = replace(OFF, fuse_qkv=True)
CHANNELS_LAST = replace(FUSED, channels_last_vae=True)
SERVED = replace(CHANNELS_LAST, tf32=True)  # EngineOptions() without warm-up: what imagegate serves by default
FP8 = replace(SERVED, fp8=True)
FASTEST = replace(FP8, compile=True)


@dataclass(frozen=True)
class Row:
    model: str
    label: str
    options: EngineOptions
    part: int
    acceleration: str = "none"
    batch4: bool = False


ROWS: tuple[Row, ...] = (
    Row("flux1-schnell", "eager (bf16, every option off)", OFF, 1),
    Row("flux1-schnell", "+ fused QKV", FUSED, 1),
    Row("flux1-schnell", "+ channels-last VAE", CHANNELS_LAST, 1),
    Row("flux1-schnell", "+ TF32 (served defaults)", SERVED, 1),
    Row("flux1-schnell", "+ fp8", FP8, 1),
    Row("flux1-schnell", "+ compile", FASTEST, 1, batch4=True),
    Row("flux1-dev", "defaults + fp8 + compile", FASTEST, 1, batch4=True),
    Row("flux1-dev", "+ First Block Cache (regular)", FASTEST, 1, acceleration="regular"),
    Row("flux1-dev", "+ TaylorSeer (high)", FASTEST, 1, acceleration="high"),
    Row("flux2-klein-4b", "defaults + fp8 + compile", FASTEST, 1, batch4=True),
    Row("p-image", "defaults + fp8 + compile", FASTEST, 1),
    Row("realesrgan", "Vulkan GPU, tile 192", SERVED, 1),
    Row("flux2-klein-4b-25", "defaults + fp8 + compile", FASTEST, 2),
    Row("flux1-fill", "defaults + fp8 + compile", FASTEST, 2),
    Row("flux1-kontext", "defaults + fp8 + compile", FASTEST, 2),
    Row("flux2-dev", "defaults + fp8 + compile", FASTEST, 3),
    Row("qwen-image", "defaults + fp8 + compile", FASTEST, 3, batch4=True),
    Row("qwen-image-edit", "defaults + fp8 + compile", FASTEST, 4),
)

# Targets on one H100/H200 at 1024x1024, batch 1 (seconds), for the rows they are about.
TARGETS: dict[tuple[str, str], float] = {
    ("flux1-schnell", "+ compile"): 0.4,
    ("flux1-dev", "defaults + fp8 + compile"): 2.5,
    ("flux1-dev", "+ First Block Cache (regular)"): 1.7,
    ("flux1-dev", "+ TaylorSeer (high)"): 1.7,
    ("flux2-klein-4b", "defaults + fp8 + compile"): 0.4,
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


def build_pipeline(build: Build, device: str, dtype: torch.dtype) -> Any:
    components: dict[str, Any] = {}
    for name, make in build.parts.items():
        with building(device, dtype):
            component = make()
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
        components[name] = component
    pipe = build.pipeline_class(**components, **build.pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def meta_components(build: Build) -> dict[str, torch.nn.Module]:
    """Every module component built on the meta device: shapes only, no memory."""
    modules = {}
    for name, make in build.parts.items():
        if name == "scheduler" or name.startswith(("tokenizer", "processor")):
            continue
        with building("meta", torch.bfloat16):
            component = make()
        if isinstance(component, torch.nn.Module):
            modules[name] = component
    return modules


def parameter_counts(build: Build) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in meta_components(build).items()}


# --------------------------------------------------------------------------- the plan (CPU)

# Usable memory as nvidia-smi reports it (GiB): an 80 GB H100 and a 141 GB H200 (143771 MiB seen here).
GPUS = {"H100 80GB": 79.6, "H200 141GB": 140.4}
# Activations, workspaces and the CUDA context at 1024x1024, batch 1, on top of the weights. An
# allowance, not a measurement: the GPU run's peak-reserved column replaces it.
ACTIVATIONS_GIB = 10.0
# Dense bf16 rate measured on an H200 (769-798 TFLOP/s for an 8192-cube bf16 matmul),
# the share of it a whole pipeline reaches (a prediction), and fp8's speed-up on the transformer's
# linear layers (half the bytes, twice the tensor-core rate, less the quantisation of activations).
BF16_FLOPS = 790e12
PIPELINE_EFFICIENCY = 0.6
FP8_SPEEDUP = 1.6
# Time plan constants (predictions): building a model with random weights on the GPU per GiB, one
# Inductor compilation of a block family, and the session's fixed cost (imports, wheels).
BUILD_S_PER_GIB = 0.15
COMPILE_S = 60.0
SESSION_FIXED_S = 60.0


def fp8_bytes(transformer: torch.nn.Module) -> int:
    """The transformer's bytes after imagegate's fp8 recipe: quantised Linear layers at one byte per
    weight plus a float32 scale per row; everything else stays bf16."""
    from imagegate.engines.speed import FP8_SKIP

    total = 0
    quantised: set[int] = set()
    for name, module in transformer.named_modules():
        if (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
                and name.split(".")[0] not in FP8_SKIP):
            quantised.add(id(module.weight))
            total += module.weight.numel() + 4 * module.out_features
    total += sum(2 * p.numel() for p in transformer.parameters() if id(p) not in quantised)
    return total


def memory_plan(build: Build, modules: dict[str, torch.nn.Module]) -> tuple[dict[str, float], dict[str, str]]:
    """GPU weights (GiB) with every component in bf16, with the transformer in fp8, with the text
    encoders offloaded to host memory, and both; and per GPU of :data:`GPUS` the first of those that
    fits with :data:`ACTIVATIONS_GIB` to spare."""
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    bf16 = sum(counts.values()) * 2 / 2**30
    text = sum(counts[name] for name in build.text_encoders if name in counts) * 2 / 2**30
    fp8 = bf16 - counts["transformer"] * 2 / 2**30 + fp8_bytes(modules["transformer"]) / 2**30
    weights = {"bf16": bf16, "fp8": fp8, "offload": bf16 - text, "fp8 + offload": fp8 - text}
    fits = {}
    for gpu, capacity in GPUS.items():
        ok = [name for name, gib in weights.items() if gib + ACTIVATIONS_GIB <= capacity]
        fits[gpu] = ok[0] if ok else "does not fit"
    return weights, fits


def transformer_flops(model: Model, transformer: torch.nn.Module, side: int = SIDE) -> float:
    """One transformer pass at ``side`` x ``side``, batch 1, counted by torch's FlopCounterMode on the
    meta device (matmuls and attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    tokens = (side // 16) ** 2
    references = 1 if model.key in ("flux1-kontext", "p-image", "qwen-image-edit") else 0
    image = tokens * (1 + references)
    config = transformer.config
    with torch.device("meta"):
        kind = type(transformer).__name__
        if kind == "FluxTransformer2DModel":
            text = 256 if model.key == "flux1-schnell" else 512
            inputs = dict(hidden_states=torch.empty(1, image, config.in_channels),
                          encoder_hidden_states=torch.empty(1, text, config.joint_attention_dim),
                          pooled_projections=torch.empty(1, config.pooled_projection_dim), timestep=torch.ones(1),
                          img_ids=torch.zeros(image, 3), txt_ids=torch.zeros(text, 3))
            if config.guidance_embeds:
                inputs["guidance"] = torch.ones(1)
        elif kind == "Flux2Transformer2DModel":
            text = 512
            inputs = dict(hidden_states=torch.empty(1, image, config.in_channels),
                          encoder_hidden_states=torch.empty(1, text, config.joint_attention_dim),
                          timestep=torch.ones(1), img_ids=torch.zeros(1, image, 4), txt_ids=torch.zeros(1, text, 4))
            if config.guidance_embeds:
                inputs["guidance"] = torch.ones(1)
        else:  # QwenImageTransformer2DModel: a short prompt, plus the reference's vision tokens when editing
            text = 40 + 200 * references
            grid = (1, side // 16, side // 16)
            inputs = dict(hidden_states=torch.empty(1, image, config.in_channels),
                          encoder_hidden_states=torch.empty(1, text, config.joint_attention_dim),
                          encoder_hidden_states_mask=torch.ones(1, text), timestep=torch.ones(1),
                          img_shapes=[[grid] * (1 + references)])
        inputs = {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "img_ids"
                  and k != "txt_ids" else v for k, v in inputs.items()}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        transformer(**inputs, return_dict=False)
    return float(counter.get_total_flops())


def predicted_call_seconds(model: Model, flops: float, fp8: bool) -> float:
    """End-to-end seconds of one call: the transformer passes at the pipeline efficiency (fp8 speeding
    them up), plus text encoding (2 x parameters x 512 tokens) and VAE decode, folded into a 10% overhead."""
    passes = model.steps * (2 if model.key.startswith("qwen") else 1)
    seconds = passes * flops / (BF16_FLOPS * PIPELINE_EFFICIENCY) / (FP8_SPEEDUP if fp8 else 1.0)
    return seconds * 1.1


def plan(models: Sequence[Model], rows: Sequence[Row], warmup: int, runs: int) -> str:
    lines = ["### Parameters (meta-device builds of the published configurations)", "",
             "| model | component | parameters | published | bf16 GiB |", "|---|---|---:|---:|---:|"]
    memory = ["### Memory plan at 1024x1024, batch 1 (weights + "
              f"{ACTIVATIONS_GIB:.0f} GiB allowance for activations and workspace)", "",
              "| model | bf16 GiB | fp8 GiB | offload GiB | fp8 + offload GiB | "
              + " | ".join(GPUS) + " |", "|---|---:|---:|---:|---:|" + "---|" * len(GPUS)]
    timing = ["### Time plan on an H200 (predicted; the GPU run measures)", "",
              "| row | part | TFLOP/pass x passes | predicted s/call | predicted row s |", "|---|---:|---:|---:|---:|"]
    per_call: dict[tuple[str, bool], float] = {}
    seen_builds: dict[int, dict[str, torch.nn.Module]] = {}
    printed: dict[tuple[str, int], str] = {}  # (class, parameters) -> the model it was listed under
    for model in models:
        if model.real is None:
            continue
        build = model.real()
        modules = meta_components(build)
        seen_builds[id(model)] = modules
        counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
        shared = []
        for name, count in counts.items():
            signature = (type(modules[name]).__name__, count)
            if signature in printed:
                shared.append(f"{name} as {printed[signature]}")
                continue
            printed[signature] = model.title
            published = PUBLISHED_PARAMETERS.get(build.published.get(name, ""), None)
            shown = f"{published / 1e9:.2f} B ({build.published[name]})" if published else ""
            lines.append(f"| {model.title} | {name} | {count / 1e9:.3f} B | {shown} | {count * 2 / 2**30:.2f} |")
        if shared:
            lines.append(f"| {model.title} | {'; '.join(shared)} | | | |")
        weights, fits = memory_plan(build, modules)
        memory.append(f"| {model.title} | " + " | ".join(f"{gib:.1f}" for gib in weights.values()) + " | "
                      + " | ".join(fits.values()) + " |")
        flops = transformer_flops(model, modules["transformer"])
        for fp8_on in (False, True):
            per_call[(model.key, fp8_on)] = predicted_call_seconds(model, flops, fp8_on)
        model_rows = [row for row in rows if row.model == model.key]
        for row in model_rows:
            call = per_call[(model.key, row.options.fp8)]
            total = (1 + warmup + runs) * call + (3 * 4 * call if row.batch4 else 0.0)
            passes = model.steps * (2 if model.key.startswith("qwen") else 1)
            timing.append(f"| {model.title} {row.label} | {row.part} | {flops / 1e12:.1f} x {passes} | "
                          f"{call:.2f} | {total:.0f} |")
    lines += [""] + memory + [""] + timing + ["", "### Session time plan on an H200 (predicted)", ""]
    lines += ["| part | models | build s | reference calls s | compile s | rows s | total s |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for part in sorted({row.part for row in rows}):
        part_rows = [row for row in rows if row.part == part]
        keys = list(dict.fromkeys(row.model for row in part_rows))
        built = [MODELS[key] for key in keys if MODELS[key].real is not None]
        build_s = sum(BUILD_S_PER_GIB * sum(2 * p.numel() for m in seen_builds[id(model)].values() for p in m.parameters()) / 2**30
                      for model in built if id(model) in seen_builds)
        reference_s = sum(per_call.get((model.key, False), 0.0) for model in built)
        families = {type(seen_builds[id(m)]["transformer"]).__name__ for m in built if id(m) in seen_builds}
        compile_s = COMPILE_S * len(families) + COMPILE_S / 2 * max(0, len(built) - len(families))
        rows_s = 0.0
        for row in part_rows:
            call = per_call.get((row.model, row.options.fp8), 2.0)
            rows_s += (1 + warmup + runs) * call + (3 * 4 * call if row.batch4 else 0.0)
        total = SESSION_FIXED_S + build_s + reference_s + compile_s + rows_s
        lines.append(f"| {part} | {', '.join(keys)} | {build_s:.0f} | {reference_s:.0f} | {compile_s:.0f} | "
                     f"{rows_s:.0f} | {total:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- measuring


class StageClock:
    """Marks around the pipeline's stages, as CUDA events on the GPU (host clock on the CPU): text
    encoding (``encode_prompt``), each denoising step's end (the step callback), VAE decode."""

    def __init__(self, pipe: Any, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[str, Any]] = []
        for owner, name, stage in ((pipe, "encode_prompt", "text"), (getattr(pipe, "vae", None), "decode", "vae")):
            original = getattr(owner, name, None) if owner is not None else None
            if original is not None:
                object.__setattr__(owner, name, self._wrap(original, stage))

    def _wrap(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"{stage}-start")
            try:
                return function(*args, **kwargs)
            finally:
                self.mark(f"{stage}-end")

        return timed

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def reset(self) -> None:
        self.marks = []

    def _ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0

    def stages(self) -> dict[str, float]:
        """Milliseconds of this call's stages: text (all encodings summed), step (median step), vae."""
        out: dict[str, float] = {}
        for stage in ("text", "vae"):
            starts = [m for n, m in self.marks if n == f"{stage}-start"]
            ends = [m for n, m in self.marks if n == f"{stage}-end"]
            if starts and ends:
                out[stage] = sum(self._ms(s, e) for s, e in zip(starts, ends))
        steps = [m for n, m in self.marks if n == "step"]
        if len(steps) >= 2:
            out["step"] = float(np.median([self._ms(a, b) for a, b in zip(steps, steps[1:])]))
        elif steps and any(n == "text-end" for n, _ in self.marks):
            # One step (upscaling, 1-step schedules): from the end of text encoding to the step's end.
            out["step"] = self._ms([m for n, m in self.marks if n == "text-end"][-1], steps[0])
        return out


@dataclass
class Result:
    model: str
    title: str
    steps: int
    row: str
    part: int
    status: str = ""  # "", "OOM", "n/a", "error", "not run"
    runs: int = 0
    p50: float | None = None
    p90: float | None = None
    first_call: float | None = None
    text_ms: float | None = None
    step_ms: float | None = None
    vae_ms: float | None = None
    store_ms: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    images_per_s_batch4: float | None = None
    psnr_db: float | None = None
    target_s: float | None = None
    notes: list[str] = field(default_factory=list)


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException | None) -> bool:
    from imagegate.engines.diffusers_base import is_out_of_memory

    while exc is not None:
        if is_out_of_memory(exc) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__
    return False


def psnr(image: Image.Image, reference: Image.Image) -> float:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB").resize(image.size), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class Session:
    """One benchmark run: the rows of the chosen part(s), under an optional deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        from imagegate.media.storage import LocalStorage

        self.args = args
        self.tiny = args.tiny
        self.cuda = not args.tiny
        self.device, self.dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
        if args.tiny:
            # Tiny matmuls on a small shared CPU: OpenMP threads spin-waiting on each other cost 10-30x
            # the work itself (the engine tests run single-threaded for the same reason).
            torch.set_num_threads(1)
        self.side = TINY_SIDE if args.tiny else SIDE
        # Wall-clock (epoch) seconds: gpu_session.sh fixes the deadline before Python even starts.
        self.deadline = args.deadline_at or (time.time() + args.deadline_s if args.deadline_s else None)
        self.store_dir = tempfile.TemporaryDirectory(prefix="imagegate-bench-store-")
        self.storage = LocalStorage(self.store_dir.name)
        self.stored = 0

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def encode_and_store(self, images: list[Image.Image], fmt: str) -> float:
        from imagegate.media.codecs import encode_image

        started = time.perf_counter()
        for image in images:
            encoded = encode_image(image, fmt)
            self.stored += 1
            self.storage.put(f"bench/{self.stored}.{encoded.extension}", encoded.data, encoded.content_type)
        return (time.perf_counter() - started) * 1000.0

    # -- one call, timed

    def timed_call(self, engine: Any, call: EngineCall, model: Model, clock: StageClock | None) -> tuple[float, dict[str, float], Any]:
        if clock is not None:
            clock.reset()
        on_step = (lambda step, total: clock.mark("step")) if clock is not None else (lambda step, total: None)
        _sync(self.cuda)
        started = time.perf_counter()
        result = engine(call, on_step)
        _sync(self.cuda)
        stages = clock.stages() if clock is not None else {}
        stages["store"] = self.encode_and_store(result.images, model.output_format)
        return time.perf_counter() - started, stages, result

    # -- a model and its rows

    def run_model(self, model: Model, rows: list[Row], results: dict[int, Result]) -> None:
        engine, clock, reference, call_s = None, None, None, None
        try:
            engine = self.load(model)
            clock = StageClock(engine.pipe, self.cuda) if hasattr(engine, "pipe") else None
            call = self.call_for(model)
            # The reference: one bf16 call with every option off (the first call of the model pays
            # one-off costs: cuDNN and cuBLAS handles, allocator growth).
            elapsed, _, first = self.timed_call(engine, call, model, clock)
            reference, call_s = first.images[0], elapsed
        except Exception as exc:  # noqa: BLE001 - every row of the model says why, the session goes on
            status = "OOM" if _is_oom(exc) else "error"
            for row in rows:
                results[id(row)].status = status
                results[id(row)].notes.append(f"build: {type(exc).__name__}: {exc}"[:200])
            if self.args.verbose:
                traceback.print_exc()
            if engine is not None:
                engine.unload()
            _free()
            return
        try:
            for row in rows:
                result = results[id(row)]
                self.run_row(engine, clock, model, row, result, reference, call_s)
                if result.p50:
                    call_s = result.p50
        finally:
            engine.unload()
            _free()

    def load(self, model: Model) -> Any:
        import importlib

        module, _, name = model.engine.partition(":")
        engine_class = getattr(importlib.import_module(module), name)
        if model.key == "realesrgan":
            tile = {"tile_size": 32} if self.tiny else {}
            return engine_class.load("builtin:realesrgan-x4plus", device=self.device, dtype="auto", **tile)
        build = model.tiny()() if self.tiny else model.real()
        pipe = build_pipeline(build, self.device, self.dtype)
        engine = engine_class(pipe, device=self.device, dtype=self.dtype, model_id=model.key, options=OFF)
        del pipe
        return engine

    def call_for(self, model: Model) -> EngineCall:
        call = model.call(self.side)
        if self.tiny and model.key == "realesrgan":
            # ncnn's CPU path runs ~1,600 model pixels a second here: a 4 MP target would take minutes.
            call = replace(call, images=[_photo(24)], options=UpscaleOptions(upscale_mode="factor", factor=2))
        return call

    def row_options(self, row: Row) -> EngineOptions:
        return replace(row.options, warmup_sizes=(), compile_backend="eager" if self.tiny else "inductor")

    def run_row(self, engine: Any, clock: StageClock | None, model: Model, row: Row, result: Result,
                reference: Image.Image, call_s: float) -> None:
        args = self.args
        predicted = (1 + args.warmup + args.runs) * call_s + (12 * call_s if row.batch4 else 0.0)
        if row.options.compile:
            predicted += COMPILE_S if not self.tiny else 0.0
        if predicted > self.left():
            result.status = "not run"
            result.notes.append(f"deadline: needs ~{predicted:.0f} s, {max(self.left(), 0):.0f} s left")
            return
        call = self.call_for(model)
        if row.acceleration != "none":
            call = replace(call, acceleration=row.acceleration)
        try:
            if hasattr(engine, "apply_options"):
                report = engine.apply_options(self.row_options(row))
                result.notes += [f"{k}: {_short(v)}" for k, v in report.items() if v.startswith("n/a") and getattr(row.options, k)]
                if row.options == FP8 and report["fp8"].startswith("n/a"):
                    result.status = "n/a"  # the row would only repeat the one before it
                    return
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            result.first_call, _, _ = self.timed_call(engine, call, model, clock)
            for _ in range(max(args.warmup - 1, 0)):
                self.timed_call(engine, call, model, clock)
            times, stages, last = [], [], None
            for _ in range(args.runs):
                elapsed, stage, last = self.timed_call(engine, call, model, clock)
                times.append(elapsed)
                stages.append(stage)
            result.runs = len(times)
            result.p50, result.p90 = float(np.percentile(times, 50)), float(np.percentile(times, 90))
            for key in ("text", "step", "vae", "store"):
                values = [s[key] for s in stages if key in s]
                if values:
                    setattr(result, f"{key}_ms", float(np.median(values)))
            if model.key == "realesrgan":
                result.notes.append("GPU memory: ncnn's own, not torch's")
            elif self.cuda:
                result.peak_allocated_gib = torch.cuda.max_memory_allocated() / 2**30
                result.peak_reserved_gib = torch.cuda.max_memory_reserved() / 2**30
            result.psnr_db = psnr(last.images[0], reference)
            info = last.info
            if info.get("acceleration_skipped"):
                result.notes.append(f"cache: {info['acceleration_skipped']}")
            if info.get("compiled_graphs"):
                result.notes.append(f"recompiled {info['compiled_graphs']} graph(s) in a timed call")
            if row.batch4:
                batch = replace(call, num_images=4)
                self.timed_call(engine, batch, model, clock)
                four = [self.timed_call(engine, batch, model, clock)[0] for _ in range(2)]
                result.images_per_s_batch4 = 4 / float(np.median(four))
        except Exception as exc:  # noqa: BLE001
            result.status = "OOM" if _is_oom(exc) else "error"
            result.notes.append(f"{type(exc).__name__}: {exc}"[:200])
            if args.verbose:
                traceback.print_exc()
            _free()


# --------------------------------------------------------------------------- output


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


def table(results: Sequence[Result]) -> str:
    lines = [
        "| model | steps | row | p50 s | p90 s | target s | first call s | text ms | step ms | VAE ms | "
        "store ms | peak alloc GiB | peak reserved GiB | img/s @4 | PSNR dB | notes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.status:
            cells = [r.status] * 2
        else:
            cells = [_fmt(r.p50, ".3f"), _fmt(r.p90, ".3f")]
        lines.append(
            f"| {r.title} | {r.steps} | {r.row} | {cells[0]} | {cells[1]} | {_fmt(r.target_s, '.1f')} | "
            f"{_fmt(r.first_call, '.1f')} | {_fmt(r.text_ms, '.0f')} | {_fmt(r.step_ms, '.1f')} | "
            f"{_fmt(r.vae_ms, '.0f')} | {_fmt(r.store_ms, '.0f')} | {_fmt(r.peak_allocated_gib, '.1f')} | "
            f"{_fmt(r.peak_reserved_gib, '.1f')} | {_fmt(r.images_per_s_batch4, '.2f')} | {_fmt(r.psnr_db, '.1f')} | "
            f"{'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def environment() -> str:
    import diffusers

    parts = [f"torch {torch.__version__}", f"diffusers {diffusers.__version__}"]
    for name in ("transformers", "torchao"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except Exception:  # noqa: BLE001 - a missing or broken optional package is reported, not fatal
            parts.append(f"{name} missing")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.insert(0, f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm {props.major}.{props.minor})")
    else:
        parts.insert(0, "CPU")
    return ", ".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", choices=("1", "2", "3", "4", "all"), help="which rows to run")
    parser.add_argument("--models", default="", help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per row (>= 10 for the table)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them, the first call included")
    parser.add_argument("--deadline-s", type=float, default=0.0, help="rows that would end later are not run")
    parser.add_argument("--deadline-at", type=float, default=0.0, help="the same, as a Unix time (gpu_session.sh)")
    parser.add_argument("--out", default="", help="directory for gpu-table.md and gpu-results.json")
    parser.add_argument("--tiny", action="store_true", help="tiny fixture checkpoints on the CPU in float32 at 64x64")
    parser.add_argument("--plan", action="store_true", help="meta-device builds: parameters, memory and time plans")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed rows")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    return args


def selected_rows(args: argparse.Namespace) -> list[Row]:
    rows = [row for row in ROWS if args.part == "all" or row.part == int(args.part)]
    return [row for row in rows if not args.models or row.model in args.models]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = selected_rows(args)
    if args.plan:
        keys = list(dict.fromkeys(row.model for row in rows))
        print(plan([MODELS[key] for key in keys], rows, args.warmup, args.runs))
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or use --tiny (CPU rehearsal) or --plan", file=sys.stderr)
        return 2
    started = time.monotonic()
    session = Session(args)
    header = f"{environment()}; {session.side}x{session.side}; p50/p90 of {args.runs} runs after {args.warmup} warm-up calls"
    print(header, flush=True)
    results = {id(row): Result(row.model, MODELS[row.model].title, MODELS[row.model].steps, row.label, row.part,
                               target_s=TARGETS.get((row.model, row.label))) for row in rows}
    for key in dict.fromkeys(row.model for row in rows):
        model_rows = [row for row in rows if row.model == key]
        if session.left() < 30:
            for row in model_rows:
                results[id(row)].status, results[id(row)].notes = "not run", ["deadline"]
            continue
        print(f"[{time.monotonic() - started:6.0f} s] {MODELS[key].title}: {len(model_rows)} row(s)", flush=True)
        session.run_model(MODELS[key], model_rows, results)
    ordered = [results[id(row)] for row in rows]
    text = f"{header}; session {time.monotonic() - started:.0f} s\n\n{table(ordered)}"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-table.md").write_text(text + "\n")
        (out / "gpu-results.json").write_text(json.dumps([asdict(r) for r in ordered], indent=1, default=str) + "\n")
    return 0 if all(r.status in ("", "n/a", "OOM", "not run") for r in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
