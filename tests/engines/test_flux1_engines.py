"""FLUX.1 engines against tiny random-weight checkpoints loaded through the real factories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagegate.engines.base import EngineCall, Flux1Options, LoraSpec
from imagegate.engines.flux1 import Flux1Fill, Flux1ImageToImage, Flux1Kontext, Flux1TextToImage
from imagegate.exceptions import EngineError, InputError, JobCanceledError, WeightsNotFoundError

from .support import gradient, mean_abs, pixels, Steps

PROMPT = "a photo of a red cat"


def t2i(**overrides) -> EngineCall:
    values = dict(task="text-to-image", prompt=PROMPT, width=64, height=64, num_inference_steps=2, seed=7)
    values.update(overrides)
    return EngineCall(**values)


@pytest.fixture(scope="module")
def t2i_engine(flux1_dirs):
    return Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="auto", model_id="tiny-flux1")


# --------------------------------------------------------------------------- text-to-image


def test_text_to_image_size_count_and_steps(t2i_engine):
    steps = Steps()
    result = t2i_engine(t2i(num_images=2), steps)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    # One batched call: both images come from one generator stream, so they differ.
    assert mean_abs(result.images[0], result.images[1]) > 0
    assert steps.seen == [(1, 2), (2, 2)]
    assert result.info["seed"] == 7 and result.info["num_inference_steps"] == 2


def test_batch_is_one_pipeline_call(t2i_engine, monkeypatch):
    calls = []
    pipe_class = type(t2i_engine.pipe)
    original = pipe_class.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("num_images_per_prompt"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", spy)
    assert len(t2i_engine(t2i(num_images=3), Steps()).images) == 3
    assert calls == [3]


def test_same_seed_same_pixels_other_seed_differs(t2i_engine):
    first = t2i_engine(t2i(seed=11), Steps()).images[0]
    again = t2i_engine(t2i(seed=11), Steps()).images[0]
    other = t2i_engine(t2i(seed=12), Steps()).images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert mean_abs(first, other) > 0.5


def test_guidance_scale_changes_output(t2i_engine):
    assert t2i_engine.guidance_distilled
    low = t2i_engine(t2i(guidance_scale=1.0), Steps()).images[0]
    high = t2i_engine(t2i(guidance_scale=8.0), Steps()).images[0]
    assert mean_abs(low, high) > 0


def test_schnell_weights_get_schnell_defaults(flux1_dirs):
    engine = Flux1TextToImage.load(str(flux1_dirs["schnell"]), device="cpu", dtype="float32")
    steps = Steps()
    result = engine(t2i(num_inference_steps=None), steps)
    assert not engine.guidance_distilled
    assert result.info["num_inference_steps"] == 4 and result.info["guidance_scale"] == 0.0
    assert steps.seen[-1] == (4, 4)


def test_size_is_rounded_to_packing_multiple(t2i_engine):
    result = t2i_engine(t2i(width=70, height=50), Steps())
    assert result.images[0].size == (64, 48)


def test_wrong_task_is_an_input_error(t2i_engine):
    with pytest.raises(InputError):
        t2i_engine(t2i(task="inpaint"), Steps())
    with pytest.raises(InputError):
        t2i_engine(t2i(acceleration="ludicrous"), Steps())


def test_negative_prompt_acts_through_true_cfg(t2i_engine):
    plain = t2i_engine(t2i(), Steps()).images[0]
    # Without true_cfg_scale a negative prompt cannot act on a guidance-distilled model.
    ignored = t2i_engine(t2i(negative_prompt="blurry"), Steps()).images[0]
    assert np.array_equal(pixels(plain), pixels(ignored))
    negative = t2i_engine(t2i(negative_prompt="blurry", options=Flux1Options(true_cfg_scale=4.0)), Steps())
    assert negative.info["true_cfg_scale"] == 4.0
    assert mean_abs(plain, negative.images[0]) > 0.5
    # FluxPipeline keeps separate cache contexts per branch, so acceleration combines with it.
    accelerated = t2i_engine(
        t2i(negative_prompt="blurry", options=Flux1Options(true_cfg_scale=4.0), acceleration="high"), Steps()
    )
    assert len(accelerated.images) == 1


# --------------------------------------------------------------------------- acceleration


def test_acceleration_levels_change_output_and_leave_no_hooks(t2i_engine):
    # First Block Cache only skips after a computed step and TaylorSeer predicts only after its
    # warm-up, so at 2 steps all three levels are identical; 8 steps exercise both.
    outputs = {}
    for level in ("none", "regular", "high"):
        outputs[level] = t2i_engine(t2i(num_inference_steps=8, acceleration=level), Steps()).images[0]
        assert not t2i_engine.pipe.transformer.is_cache_enabled
    assert mean_abs(outputs["none"], outputs["regular"]) > 0
    assert mean_abs(outputs["none"], outputs["high"]) > 0
    assert mean_abs(outputs["regular"], outputs["high"]) > 0
    # No state leaks from the accelerated calls into a plain one.
    again = t2i_engine(t2i(num_inference_steps=8), Steps()).images[0]
    assert np.array_equal(pixels(again), pixels(outputs["none"]))


# --------------------------------------------------------------------------- cancellation and errors


def test_cancel_from_on_step_stops_the_pipeline(t2i_engine):
    steps = Steps(cancel_at=2)
    with pytest.raises(JobCanceledError):
        t2i_engine(t2i(num_inference_steps=8, acceleration="regular"), steps)
    assert steps.seen == [(1, 8), (2, 8)]
    assert not t2i_engine.pipe.transformer.is_cache_enabled
    assert len(t2i_engine(t2i(), Steps()).images) == 1


def test_pipeline_failure_becomes_engine_error(t2i_engine, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("tensor exploded")

    monkeypatch.setattr(t2i_engine.pipe.transformer, "forward", boom)
    with pytest.raises(EngineError, match="tiny-flux1: tensor exploded") as info:
        t2i_engine(t2i(), Steps())
    assert isinstance(info.value.__cause__, ValueError)


def test_out_of_memory_becomes_engine_error(t2i_engine, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(t2i_engine.pipe.transformer, "forward", oom)
    with pytest.raises(EngineError, match="out of memory") as info:
        t2i_engine(t2i(), Steps())
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_memory_bytes_and_unload(flux1_dirs):
    engine = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32")
    # Each allocation once: the fused QKV projections' parts are views of the fused weight.
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for module in engine.pipe.components.values()
        if isinstance(module, torch.nn.Module)
        for t in list(module.parameters()) + list(module.buffers())
    }
    expected = sum(storages.values())
    assert engine.memory_bytes == expected > 100_000
    unfused = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32",
                                    options={"fuse_qkv": False})
    assert unfused.memory_bytes == engine.memory_bytes  # fusing costs no memory
    unfused.unload()
    engine.unload()
    assert engine.memory_bytes == 0
    with pytest.raises(EngineError, match="unloaded"):
        engine(t2i(), Steps())


def test_missing_local_weights(tmp_path):
    missing = tmp_path / "nowhere" / "flux"
    with pytest.raises(WeightsNotFoundError) as info:
        Flux1TextToImage.load(str(missing), device="cpu", dtype="auto", model_id="flux-dev")
    message = str(info.value)
    assert "weights for flux-dev not found" in message and str(missing) in message
    assert "imagegate weights pull flux-dev" in message and "[models.flux-dev]" in message


def test_missing_hub_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError) as info:
        Flux1TextToImage.load("black-forest-labs/FLUX.1-dev", device="cpu", dtype="auto", model_id="flux-dev")
    message = str(info.value)
    assert "'black-forest-labs/FLUX.1-dev' is not a local directory and is not in the Hugging Face cache" in message
    assert "imagegate weights pull flux-dev" in message


def test_incomplete_local_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="weights for flux-dev not found"):
        Flux1TextToImage.load(str(tmp_path / "empty"), device="cpu", dtype="auto", model_id="flux-dev")


# --------------------------------------------------------------------------- LoRA


def make_lora(transformer_dir: Path, out_dir: Path) -> Path:
    """A peft LoRA on the tiny transformer's attention, saved the way trainers save FLUX LoRAs."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(transformer_dir, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights=False))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out_dir / "pytorch_lora_weights.safetensors"


def test_lora_applies_scales_and_is_removed(t2i_engine, flux1_dirs, tmp_path):
    lora = make_lora(flux1_dirs["t2i"], tmp_path)
    base = t2i_engine(t2i(), Steps()).images[0]
    with_lora = t2i_engine(t2i(loras=[LoraSpec(str(lora), 1.0)]), Steps())
    zero = t2i_engine(t2i(loras=[LoraSpec(str(lora), 0.0)]), Steps()).images[0]
    after = t2i_engine(t2i(), Steps()).images[0]

    assert mean_abs(base, with_lora.images[0]) > 0.5
    assert mean_abs(base, zero) < 0.05
    assert np.array_equal(pixels(base), pixels(after))
    assert not getattr(t2i_engine.pipe.transformer, "peft_config", None)
    assert not any(t2i_engine.pipe.get_list_adapters().values())


def test_lora_removed_after_a_canceled_call(t2i_engine, flux1_dirs, tmp_path):
    lora = make_lora(flux1_dirs["t2i"], tmp_path)
    with pytest.raises(JobCanceledError):
        t2i_engine(t2i(loras=[LoraSpec(str(lora), 1.0)]), Steps(cancel_at=1))
    assert not getattr(t2i_engine.pipe.transformer, "peft_config", None)


def test_lora_that_does_not_exist_is_an_input_error(t2i_engine, tmp_path):
    with pytest.raises(InputError, match="loras"):
        t2i_engine(t2i(loras=[LoraSpec(str(tmp_path / "gone.safetensors"))]), Steps())


# --------------------------------------------------------------------------- image-to-image


def test_image_to_image_resizes_and_strength_matters(flux1_dirs):
    engine = Flux1ImageToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="auto", model_id="tiny-flux1")
    source = gradient(100, 80)
    call = dict(task="image-to-image", prompt=PROMPT, images=[source], width=64, height=64,
                num_inference_steps=4, seed=5)
    steps = Steps()
    weak = engine(EngineCall(**call, strength=0.5), steps)
    strong = engine(EngineCall(**call, strength=1.0), Steps())
    assert weak.images[0].size == (64, 64)
    # strength 0.5 of 4 steps runs the last 2; the reported total follows the real schedule.
    assert steps.seen == [(1, 2), (2, 2)] and weak.info["strength"] == 0.5
    assert mean_abs(weak.images[0], strong.images[0]) > 0.5
    # Without a size the input's (rounded) size is kept.
    kept = engine(EngineCall(**{**call, "width": None, "height": None}, strength=0.5), Steps())
    assert kept.images[0].size == (96, 80)
    with pytest.raises(InputError):
        engine(EngineCall(**{**call, "images": []}), Steps())


# --------------------------------------------------------------------------- fill


def test_fill_repaints_only_the_mask(flux1_dirs):
    engine = Flux1Fill.load(str(flux1_dirs["fill"]), device="cpu", dtype="auto", model_id="tiny-flux1-fill")
    source = gradient(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white = fill
    call = dict(task="inpaint", prompt=PROMPT, images=[source], mask=mask, width=64, height=64,
                num_inference_steps=2, seed=1)
    result = engine(EngineCall(**call), Steps())
    out, src, inside = pixels(result.images[0]), pixels(source), np.asarray(mask) > 127
    assert result.images[0].size == (64, 64)
    assert np.abs(out - src)[~inside].mean() < np.abs(out - src)[inside].mean()
    assert np.abs(out - src)[inside].mean() > 5

    raw = engine(EngineCall(**call, options=Flux1Options(preserve_unmasked=False)), Steps()).images[0]
    # The raw pipeline output agrees with the composite inside the mask.
    assert np.abs(pixels(raw) - out)[inside].mean() < 1
    other_mask = Image.new("L", (64, 64), 0)
    other_mask.paste(255, (0, 0, 32, 64))
    moved = engine(EngineCall(**{**call, "mask": other_mask}, options=Flux1Options(preserve_unmasked=False)), Steps())
    assert mean_abs(raw, moved.images[0]) > 0  # the mask conditions the transformer
    with pytest.raises(InputError, match="mask"):
        engine(EngineCall(**{**call, "mask": None}), Steps())


# --------------------------------------------------------------------------- kontext


def test_kontext_edit_keeps_input_size_and_honours_small_sizes(flux1_dirs):
    engine = Flux1Kontext.load(str(flux1_dirs["kontext"]), device="cpu", dtype="auto", model_id="tiny-flux1-kontext")
    source = gradient(72, 56)
    call = dict(task="edit", prompt="make it blue", images=[source], num_inference_steps=2, seed=3)
    edited = engine(EngineCall(**call), Steps())
    assert edited.images[0].size == (64, 48)  # the input's size, down to multiples of 16
    sized = engine(EngineCall(**call, width=64, height=64), Steps())
    assert sized.images[0].size == (64, 64)
    # The reference image conditions the result.
    other = engine(EngineCall(**{**call, "images": [source.transpose(Image.Transpose.ROTATE_180)]}), Steps())
    assert mean_abs(edited.images[0], other.images[0]) > 0
    restored = engine(EngineCall(**{**call, "task": "restore", "prompt": ""}), Steps())
    assert restored.images[0].size == (64, 48)
    with pytest.raises(InputError):
        engine(EngineCall(**{**call, "images": [source, source]}), Steps())
    # Kontext's loop shares one cache state between the CFG branches: refused, not silently wrong.
    with pytest.raises(InputError, match="acceleration"):
        engine(EngineCall(**call, negative_prompt="blur", options=Flux1Options(true_cfg_scale=2.0), acceleration="regular"),
               Steps())
