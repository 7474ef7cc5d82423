"""Engine speed options (fused QKV, compile, fp8, ...), component sharing between engines over the
same weights, and the overridable acceleration config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig
from PIL import Image

from imagegate.engines import diffusers_base as db
from imagegate.engines.base import EngineCall, LoraSpec, LoraTrainingOptions, QwenImageOptions
from imagegate.engines.diffusers_base import ComponentCache, EngineOptions, WarmupSize
from imagegate.engines.flux1 import Flux1TextToImage
from imagegate.engines.manager import ModelManager
from imagegate.exceptions import EngineError, InputError

from .support import mean_abs, noop, pixels



@pytest.fixture(scope="module")
def flux2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegate.fixtures.flux2 import build_flux2

    return build_flux2(tmp_path_factory.mktemp("flux2-shared"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegate.fixtures.qwen_image import build_qwen_image

    return build_qwen_image(tmp_path_factory.mktemp("qwen-shared"))


def t2i(**overrides) -> EngineCall:
    values = dict(task="text-to-image", prompt="a photo of a red cat", width=64, height=64, num_inference_steps=2, seed=3)
    values.update(overrides)
    return EngineCall(**values)


def make_lora(checkpoint: Path, out_dir: Path) -> Path:
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(checkpoint, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                       init_lora_weights=False))
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out_dir / "pytorch_lora_weights.safetensors"


# --------------------------------------------------------------------------- options


def test_options_coerce_and_device_rules():
    assert EngineOptions.coerce(None) == EngineOptions()
    assert EngineOptions.coerce({"compile": True}).compile is True
    with pytest.raises(EngineError, match="unknown engine option"):
        EngineOptions.coerce({"turbo": True})
    defaults = EngineOptions()
    assert (defaults.compile, defaults.fuse_qkv, defaults.fp8, defaults.channels_last_vae, defaults.tf32) == (
        False, True, False, True, True)
    cpu = EngineOptions(fp8=True, compile=True).for_device("cpu")
    assert (cpu.fp8, cpu.channels_last_vae, cpu.tf32, cpu.compile, cpu.fuse_qkv) == (False, False, False, True, True)
    assert not any(getattr(EngineOptions.eager(), f) for f in ("compile", "fuse_qkv", "fp8", "channels_last_vae", "tf32"))
    assert defaults.warmup_sizes == (WarmupSize(1024, 1024),) and EngineOptions.eager().warmup_sizes == ()
    sizes = EngineOptions.coerce({"warmup_sizes": ["512x768", "1024x1024*4"]}).warmup_sizes
    assert sizes == (WarmupSize(512, 768), WarmupSize(1024, 1024, 4)) and str(sizes[1]) == "1024x1024*4"
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        EngineOptions.coerce({"warmup_sizes": ["1024 by 1024"]})


def test_public_memory_helpers():
    assert db.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert db.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not db.is_out_of_memory(ValueError("out of memory"))
    db.release_memory()
    assert not hasattr(db, "_is_oom") and not hasattr(db, "_release_memory")
    # Views count once: memory is per allocation, not per tensor.
    module = torch.nn.Module()
    base = torch.zeros(10)
    module.a = torch.nn.Parameter(base[:5], requires_grad=False)
    module.b = torch.nn.Parameter(base[5:], requires_grad=False)
    assert db.module_bytes(module) == 40


def test_fused_qkv_is_free_and_matches_unfused(flux1_dirs, tmp_path):
    source = str(flux1_dirs["t2i"])
    fused = Flux1TextToImage.load(source, device="cpu", dtype="float32")
    plain = Flux1TextToImage.load(source, device="cpu", dtype="float32", options=EngineOptions(fuse_qkv=False))
    assert fused.optimisations["fuse_qkv"] == "on" and plain.optimisations["fuse_qkv"] == "off"
    assert fused.optimisations["tf32"].startswith("n/a") and fused.optimisations["fp8"] == "off"
    attn = fused.pipe.transformer.transformer_blocks[0].attn
    assert attn.fused_projections and not plain.pipe.transformer.transformer_blocks[0].attn.fused_projections
    # The separate projections are views of the fused weight: no second copy.
    assert attn.to_q.weight.untyped_storage().data_ptr() == attn.to_qkv.weight.untyped_storage().data_ptr()
    assert fused.memory_bytes == plain.memory_bytes
    assert mean_abs(fused(t2i(), noop).images[0], plain(t2i(), noop).images[0]) < 0.05

    # A LoRA sits on the separate projections: its call runs unfused, and fusion comes back after.
    seen = []
    original = attn.processor

    def spy(module, *args, **kwargs):
        seen.append(module.fused_projections)
        return original(module, *args, **kwargs)

    attn.processor = spy
    try:
        lora = make_lora(flux1_dirs["t2i"], tmp_path)
        with_lora = fused(t2i(loras=[LoraSpec(str(lora), 1.0)]), noop).images[0]
        assert seen and not any(seen)
        seen.clear()
        base = fused(t2i(), noop).images[0]
        assert seen and all(seen)
    finally:
        attn.processor = original
    assert mean_abs(with_lora, base) > 0.5
    assert mean_abs(with_lora, plain(t2i(loras=[LoraSpec(str(lora), 1.0)]), noop).images[0]) < 0.05
    fused.unload()
    plain.unload()


def test_compile_path_with_loras_and_acceleration(flux1_dirs, tmp_path):
    # The eager backend runs torch.compile's Dynamo path without generating code (fast on a CPU).
    source = str(flux1_dirs["t2i"])
    compiled = Flux1TextToImage.load(source, device="cpu", dtype="float32",
                                     options={"compile": True, "compile_backend": "eager", "warmup_sizes": ["64x64"]})
    plain = Flux1TextToImage.load(source, device="cpu", dtype="float32")
    try:
        assert compiled.optimisations["compile"] == "on (repeated blocks)"
        assert db.is_compiled(compiled.denoiser) and not db.is_compiled(plain.denoiser)
        assert mean_abs(compiled(t2i(), noop).images[0], plain(t2i(), noop).images[0]) < 0.05
        lora = make_lora(flux1_dirs["t2i"], tmp_path)
        call = t2i(loras=[LoraSpec(str(lora), 1.0)], num_inference_steps=4, acceleration="high")
        assert mean_abs(compiled(call, noop).images[0], plain(call, noop).images[0]) < 0.05
    finally:
        compiled.unload()
        plain.unload()
        torch._dynamo.reset()


def test_fp8_is_not_available_on_cpu(flux1_dirs):
    engine = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32", options={"fp8": True})
    assert engine.optimisations["fp8"].startswith("n/a")
    assert Flux1TextToImage.component_variants(EngineOptions(fp8=True).for_device("cpu")) == {}
    engine.unload()


# --------------------------------------------------------------------------- acceleration config


def test_acceleration_config_is_an_engine_method(flux1_dirs, flux2_dir):
    from imagegate.engines.registry import resolve_factory

    flux1 = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32")
    flux2 = resolve_factory("flux2.relight")(str(flux2_dir), device="cpu", dtype="auto")
    assert isinstance(flux1.acceleration_config("regular"), FirstBlockCacheConfig)
    regular = flux2.acceleration_config("regular")
    assert isinstance(regular, TaylorSeerCacheConfig) and regular.cache_interval == 2
    assert flux2.acceleration_config("high").cache_interval == db.HIGH_TAYLORSEER_CACHE_INTERVAL
    assert flux2.acceleration_config("none") is None
    with pytest.raises(InputError, match="acceleration"):
        flux2.acceleration_config("ludicrous")
    assert not hasattr(flux2, "_call_lock")
    flux1.unload()
    flux2.unload()


# --------------------------------------------------------------------------- sharing


def test_component_cache_variants_and_weak_references():
    cache = ComponentCache()
    group = ComponentCache.group("org/model", "cpu", torch.float32)
    transformer, vae = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cache.register(group, {"transformer": transformer, "vae": vae, "is_distilled": True}, {"transformer": "fp8"})
    assert cache.find(group, {"transformer": "fp8"}) == {"transformer": transformer, "vae": vae}
    assert cache.find(group) == {"vae": vae}  # the bf16 transformer is another thing
    assert cache.find(ComponentCache.group("org/other", "cpu", torch.float32)) == {}
    assert cache.call_lock(group) is cache.call_lock(group)
    del transformer
    assert cache.find(group, {"transformer": "fp8"}) == {"vae": vae}


def test_flux2_engine_keys_share_one_copy_of_the_weights(flux2_dir):
    source = str(flux2_dir)
    manager = ModelManager("cpu", "auto")
    t2i_engine = manager.get("flux-2-dev", "flux2.text-to-image", source)
    single = t2i_engine.memory_bytes
    engines = [t2i_engine] + [
        manager.get(f"flux-2-{key}", f"flux2.{key}", source) for key in ("edit", "relight", "train-lora")
    ]
    for engine in engines[1:]:
        for name in ("transformer", "text_encoder", "vae", "tokenizer"):
            assert getattr(engine.pipe, name) is getattr(t2i_engine.pipe, name)
        assert engine.pipe.scheduler is not t2i_engine.pipe.scheduler  # per-call state stays private
        assert engine._lock is t2i_engine._lock  # calls on shared modules are serialised
    assert manager.used_bytes == single  # four engines, one copy, counted once

    trainer = engines[3]
    result = trainer(EngineCall(task="train-lora", prompt="cat", images=[Image.new("RGB", (64, 64), "red")],
                                options=LoraTrainingOptions(steps=2, rank=2, resolution=64)), noop)
    assert result.files and not getattr(t2i_engine.pipe.transformer, "peft_config", None)
    assert t2i_engine.pipe.transformer.transformer_blocks[0].attn.fused_projections  # training ran unfused
    assert t2i_engine(t2i(), noop).images[0].size == (64, 64)

    # Unloading one sharer frees nothing; the others keep working.
    assert manager.unload("flux2.relight", source)
    assert manager.used_bytes == single
    assert engines[1](EngineCall(task="edit", prompt="make it blue", images=[Image.new("RGB", (64, 64), "red")],
                                 width=64, height=64, num_inference_steps=1), noop).images
    manager.unload_all()


def test_reloading_a_sharer_does_not_evict_what_it_shares(flux1_dirs):
    source = str(flux1_dirs["t2i"])
    manager = ModelManager("cpu", "float32", memory_budget_bytes=1)
    probe = manager.get("a", "flux1.text-to-image", source)
    manager.memory_budget_bytes = int(probe.memory_bytes * 1.5)
    manager.get("b", "flux1.image-to-image", source)
    assert manager.unload("flux1.image-to-image", source)
    again = manager.get("b", "flux1.image-to-image", source)  # known size, but all of it is shared
    assert [l.model_id for l in manager.loaded()] == ["a", "b"]
    assert again.pipe.transformer is probe.pipe.transformer and probe.pipe is not None
    manager.unload_all()


def test_qwen_image_engines_keep_their_guidance_to_themselves(qwen_dir, tmp_path):
    """Text-to-image and edit load different checkpoints, so each transformer carries its own
    guidance hook: a CFG window or image guidance on one never reaches the other."""
    from imagegate.fixtures.qwen_image import build_qwen_image_edit

    manager = ModelManager("cpu", "auto", engine_options={"fuse_qkv": True})
    text = manager.get("boogu-image", "qwen-image.text-to-image", str(qwen_dir))
    edit = manager.get("boogu-image-edit", "qwen-image.edit", str(build_qwen_image_edit(tmp_path)))
    assert edit.pipe.transformer is not text.pipe.transformer and edit.guidance_hook is not text.guidance_hook
    assert text.optimisations["fuse_qkv"].startswith("n/a")
    assert manager.used_bytes == text.memory_bytes + edit.memory_bytes
    window = QwenImageOptions(cfg_range_start=0.0, cfg_range_end=0.5)
    guided = dict(negative_prompt="blurry", guidance_scale=4.0, num_inference_steps=4)
    first = text(t2i(options=window, **guided), noop)
    edited = edit(EngineCall(task="edit", prompt="make it blue", images=[Image.new("RGB", (64, 64), "red")],
                             options=QwenImageOptions(image_guidance_scale=2.0), **guided), noop)
    assert first.info["unconditional_passes_skipped"] == 2 and first.info["cfg_range"] == [0.0, 0.5]
    assert edited.info["unconditional_passes_skipped"] == 0 and edited.info["reference_free_passes"] == 8
    assert pixels(text(t2i(options=window, **guided), noop).images[0]).tolist() == pixels(first.images[0]).tolist()
    manager.unload_all()


def test_manager_passes_engine_options(flux1_dirs):
    manager = ModelManager("cpu", "auto", engine_options=EngineOptions(fuse_qkv=False))
    engine = manager.get("a", "flux1.text-to-image", str(flux1_dirs["t2i"]))
    assert engine.optimisations["fuse_qkv"] == "off"
    manager.unload_all()


def test_a_failed_compilation_fails_one_call_then_runs_eagerly(flux1_dirs):
    from torch._dynamo import register_backend

    @register_backend(name="imagegate_test_broken")
    def broken(graph_module, example_inputs):
        raise RuntimeError("no code for you")

    engine = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32",
                                   options={"compile": True, "compile_backend": "imagegate_test_broken", "warmup_sizes": []})
    try:
        with pytest.raises(EngineError, match="compilation failed"):
            engine(t2i(), noop)
        assert engine.optimisations["compile"].startswith("n/a: compilation failed")
        assert engine(t2i(), noop).images[0].size == (64, 64)
    finally:
        engine.unload()
        torch._dynamo.reset()
