"""FLUX.2 LoRA training on the tiny FLUX.2 checkpoint: it learns, it saves a LoRA the pipeline
loads back, it reports and honours cancellation, and it leaves the warm model untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as load_safetensors

from imagegate.engines.base import EngineCall, LoraSpec, LoraTrainingOptions
from imagegate.engines.lora_trainer import LORA_CONTENT_TYPE, LORA_FILENAME, Flux2LoraTrainer
from imagegate.engines.registry import resolve_factory
from imagegate.exceptions import EngineError, InputError, JobCanceledError, WeightsNotFoundError

from .support import Steps

TRIGGER = "TOK"
STEPS = 20
LEARNING_RATE = 3e-2  # a tiny random model: large steps show learning within 20 of them


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegate.fixtures.flux2 import build_flux2

    return build_flux2(tmp_path_factory.mktemp("flux2-train"))


@pytest.fixture(scope="module")
def trainer(checkpoint) -> Flux2LoraTrainer:
    return resolve_factory("flux2.train-lora")(str(checkpoint), device="cpu", dtype="auto", model_id="flux-2-trainer")


@pytest.fixture(scope="module")
def trained(trainer):
    steps = Steps()
    result = trainer(train_call(), steps)
    return result, steps


def subject(width: int = 64, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(255, 0, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=2).astype(np.uint8))


def train_call(images=None, **options) -> EngineCall:
    options = LoraTrainingOptions(**{"steps": STEPS, "learning_rate": LEARNING_RATE, "rank": 4, **options})
    return EngineCall(task="train-lora", prompt=TRIGGER, images=images or [subject()], seed=0, options=options)


def flow_matching_loss(pipe, image: Image.Image) -> float:
    """The training objective at five fixed noise levels and fixed noise: a deterministic yardstick."""
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(image, height=64, width=64)
        latents = pipe._encode_vae_image(pixels, generator=None)
        ids = pipe._prepare_latent_ids(latents)
        x0 = pipe._pack_latents(latents)
        embeds, text_ids = pipe.encode_prompt(prompt=TRIGGER, device="cpu", num_images_per_prompt=1)
        generator = torch.Generator().manual_seed(123)
        losses = []
        for level in (0.2, 0.4, 0.6, 0.8, 0.95):
            noise = torch.randn(x0.shape, generator=generator)
            sigma = torch.tensor([level])
            prediction = pipe.transformer(
                hidden_states=(1 - sigma) * x0 + sigma * noise, timestep=sigma, guidance=torch.tensor([4.0]),
                encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids, return_dict=False,
            )[0]
            losses.append(F.mse_loss(prediction, noise - x0).item())
    return float(np.mean(losses))


def test_registry_key():
    assert resolve_factory("flux2.train-lora").__self__ is Flux2LoraTrainer


def test_training_reports_every_step_and_returns_a_lora_file(trained, trainer):
    result, steps = trained
    assert steps.seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    # Every step reports its loss (the event stream shows it as the job's progress).
    assert len(steps.losses) == STEPS and all(loss > 0 for loss in steps.losses)
    assert result.images == []
    [(name, data, content_type)] = result.files
    assert (name, content_type) == (LORA_FILENAME, LORA_CONTENT_TYPE)
    tensors = load_safetensors(data)
    assert tensors and all(key.startswith("transformer.") and "lora_" in key for key in tensors)
    assert any("single_transformer_blocks.0.attn.to_qkv_mlp_proj" in key for key in tensors)
    assert result.info["steps"] == STEPS and result.info["rank"] == 4 and result.info["images"] == 1
    # The warm model is back to its base weights and frozen.
    transformer = trainer.pipe.transformer
    assert not getattr(transformer, "peft_config", None)
    assert not any(p.requires_grad for p in transformer.parameters())


def test_loss_decreases(trained, trainer, checkpoint, tmp_path):
    result, _ = trained
    assert result.info["final_loss"] < result.info["initial_loss"]
    pipe = trainer.pipe
    before = flow_matching_loss(pipe, subject())
    lora = tmp_path / LORA_FILENAME
    lora.write_bytes(result.files[0][1])
    pipe.load_lora_weights(str(lora), adapter_name="trained")
    try:
        after = flow_matching_loss(pipe, subject())
    finally:
        pipe.unload_lora_weights()
    assert after < 0.7 * before


def test_saved_lora_loads_in_flux2_and_changes_output(trained, checkpoint, tmp_path):
    result, _ = trained
    lora = tmp_path / LORA_FILENAME
    lora.write_bytes(result.files[0][1])
    engine = resolve_factory("flux2.text-to-image")(str(checkpoint), device="cpu", dtype="auto")
    call = EngineCall(task="text-to-image", prompt=f"a photo of {TRIGGER}", width=64, height=64,
                      num_inference_steps=2, seed=1)
    base = np.asarray(engine(call, Steps()).images[0], dtype=np.int16)
    call.loras = [LoraSpec(str(lora), 1.0)]
    tuned = np.asarray(engine(call, Steps()).images[0], dtype=np.int16)
    assert np.abs(base - tuned).mean() > 1


def test_same_seed_same_lora(trained, trainer):
    def weights(result) -> dict[str, torch.Tensor]:
        # Compare tensors, not bytes: safetensors writes header metadata in hash-map order.
        return load_safetensors(result.files[0][1])

    first = weights(trained[0])
    again = weights(trainer(train_call(), Steps()))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    shorter = weights(trainer(train_call(steps=2), Steps()))
    assert any(not torch.equal(first[k], shorter[k]) for k in first)


def test_several_images_of_different_sizes(trainer):
    images = [subject(), subject(96, 64), Image.new("RGB", (128, 128), (200, 40, 40))]
    result = trainer(train_call(images=images, steps=3, resolution=64), Steps())
    assert result.info["images"] == 3
    # 96x64 fits the 64² area budget at 78x52, then snaps down to the 16 grid; 128² scales to 64².
    assert result.info["resolution"] == [[64, 64], [64, 48], [64, 64]]


def test_cancel_stops_training_and_removes_the_adapter(trainer):
    steps = Steps(cancel_at=3)
    with pytest.raises(JobCanceledError):
        trainer(train_call(), steps)
    assert steps.seen == [(1, STEPS), (2, STEPS), (3, STEPS)]
    assert not getattr(trainer.pipe.transformer, "peft_config", None)
    assert trainer(train_call(steps=1), Steps()).info["steps"] == 1


def test_out_of_memory_becomes_engine_error(trainer, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(trainer.pipe.transformer, "forward", oom)
    with pytest.raises(EngineError, match="out of memory") as info:
        trainer(train_call(steps=2), Steps())
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert not getattr(trainer.pipe.transformer, "peft_config", None)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"images": []}, "images"),
        ({"task": "text-to-image"}, "task"),
        ({"images": [Image.new("RGB", (32, 32))]}, "images"),
    ],
)
def test_invalid_requests(trainer, change, field):
    call = train_call()
    for key, value in change.items():
        setattr(call, key, value)
    with pytest.raises(InputError, match=field):
        trainer(call, Steps())


def test_missing_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights for flux-2-trainer not found"):
        resolve_factory("flux2.train-lora")(str(tmp_path / "nope"), device="cpu", dtype="auto",
                                            model_id="flux-2-trainer")
