"""FLUX.2 LoRA training (``flux2.train-lora``): a short peft fine-tune of the FLUX.2 transformer.

One call trains one LoRA on ``call.images`` (one reference image, or the images of a dataset zip
the caller unpacked) with ``call.prompt`` as the caption / trigger word, and returns it as a
``lora.safetensors`` file in the diffusers LoRA format, which ``Flux2Pipeline.load_lora_weights``
(and so imagegate's own ``loras``) loads back.

The objective is the one FLUX.2 was trained with, rectified flow: for a clean latent ``x0``, noise
``e`` and a noise level ``s`` drawn from the scheduler's sigmas at the image's resolution, the
transformer sees ``(1 - s) * x0 + s * e`` at timestep ``s`` and is trained (MSE) to predict the
velocity ``e - x0``, the quantity ``FlowMatchEulerDiscreteScheduler.step`` integrates at inference.
Only the LoRA matrices train (AdamW); the VAE and text encoder only encode, once, up front.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from PIL import Image

from imagegate.engines.base import LORA_TRAINING_MIN_SIDE, EngineCall, EngineResult, LoraTrainingOptions, StepCallback
from imagegate.engines.diffusers_base import (
    DiffusersEngine,
    eager_execution,
    is_compiled,
    is_out_of_memory,
    qkv_unfused,
    release_memory,
)
from imagegate.engines.flux2 import DEV_GUIDANCE, DEV_STEPS, MAX_SEQUENCE_LENGTH
from imagegate.engines.processors import pixtral_tokenizer
from imagegate.exceptions import EngineError, InputError, JobCanceledError

MIN_SIDE = LORA_TRAINING_MIN_SIDE
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-4
# The guidance embedding is fed the engines' default guidance, so the LoRA learns the conditioning
# it will be used with.
TRAIN_GUIDANCE = DEV_GUIDANCE
# Noise levels are drawn from a 1000-entry schedule shifted the way the pipeline shifts its
# DEV_STEPS-step schedule at the image's token count (FLUX.2's empirical mu), so training puts its
# effort where inference spends its steps.
SIGMA_TABLE_SIZE = 1000
LOSS_WINDOW = 10  # final_loss / initial_loss average this many steps: one step's loss swings with s
TRAIN_ADAPTER = "imagegate_training"
# Attention projections of both block kinds: the double-stream blocks' image and text projections,
# and the single-stream blocks' fused QKV+MLP input and output. (A bare "to_out" would also match
# the double blocks' ModuleList, which peft cannot wrap.)
LORA_TARGET_MODULES = (
    r".*\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_qkv_mlp_proj)"
    r"|.*single_transformer_blocks\.\d+\.attn\.to_out"
)
LORA_FILENAME = "lora.safetensors"
LORA_CONTENT_TYPE = "application/octet-stream"


class _Sample:
    """One training image: packed clean latents, their position ids and the sigma table."""

    def __init__(self, latents: torch.Tensor, ids: torch.Tensor, sigmas: torch.Tensor, size: tuple[int, int]):
        self.latents = latents
        self.ids = ids
        self.sigmas = sigmas
        self.size = size


class Flux2LoraTrainer(DiffusersEngine):
    """Trains a LoRA on the FLUX.2 [dev] transformer of the loaded ``Flux2Pipeline``.

    :class:`LoraTrainingOptions`: ``steps`` (default 1000), ``learning_rate`` (default 1e-4), ``rank``
    (default 16), ``resolution`` (training side length, default 512). Each step trains on one image
    (cycling through them) with fresh noise; ``on_step(step, steps)`` is called after every
    optimizer step, so cancelling stops training there. Training noise is seeded by ``call.seed``.
    """

    pipeline_class = Flux2Pipeline
    tasks: ClassVar[frozenset[str]] = frozenset({"train-lora"})
    family: ClassVar[str] = "flux2"
    options_type = LoraTrainingOptions
    # Training needs the bf16 weights and autograd through plain modules. Loaded through a shared
    # component cache the trainer reuses the inference engines' bf16 transformer (fused and compiled
    # or not: training runs it eagerly on its separate Q/K/V projections, where the LoRA sits).
    qkv_fusion = False
    allows_fp8 = False
    allows_compile = False

    @classmethod
    def load_components(cls, source: str) -> dict[str, Any]:
        return pixtral_tokenizer(source)

    def pipeline_kwargs(self, call: EngineCall) -> dict[str, Any]:
        raise InputError("task", "the LoRA trainer does not generate images")

    # -- inputs

    def _train_size(self, image: Image.Image, area: int) -> tuple[int, int]:
        width, height = image.size
        if width * height > area:
            scale = (area / (width * height)) ** 0.5
            width, height = width * scale, height * scale
        multiple = self.vae_scale_factor * 2
        return max(multiple, int(width) // multiple * multiple), max(multiple, int(height) // multiple * multiple)

    @torch.no_grad()
    def _encode_images(self, images: list[Image.Image], area: int) -> list[_Sample]:
        pipe = self._require_pipe()
        device = pipe._execution_device
        samples = []
        for index, image in enumerate(images):
            if min(image.size) < MIN_SIDE:
                width, height = image.size
                raise InputError(f"images[{index}]", f"is {width}x{height}; sides must be ≥ {MIN_SIDE} px")
            image = image.convert("RGB")
            width, height = self._train_size(image, area)
            pixels = pipe.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")
            pixels = pixels.to(device=device, dtype=pipe.vae.dtype)
            # The pipeline's own reference encoding: VAE mode, 2x2 patchify, batch-norm statistics.
            latents = pipe._encode_vae_image(image=pixels, generator=None)
            ids = pipe._prepare_latent_ids(latents).to(device)
            packed = pipe._pack_latents(latents).to(self.dtype)
            samples.append(_Sample(packed, ids, self._sigma_table(packed.shape[1], device), (width, height)))
        return samples

    def _sigma_table(self, image_seq_len: int, device: torch.device) -> torch.Tensor:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self._require_pipe().scheduler.config)
        mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=DEV_STEPS)
        scheduler.set_timesteps(
            sigmas=np.linspace(1.0, 1.0 / SIGMA_TABLE_SIZE, SIGMA_TABLE_SIZE), mu=mu, device=device
        )
        return scheduler.sigmas[:-1].to(device=device, dtype=torch.float32)  # drop the terminal 0

    # -- the adapter

    def _add_adapter(self, rank: int, seed: int) -> list[torch.nn.Parameter]:
        from peft import LoraConfig

        transformer = self._require_pipe().transformer
        transformer.requires_grad_(False)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            lora_dropout=0.0,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGET_MODULES,
        )
        # LoRA A is drawn from the global RNG; fork it so training is reproducible per seed without
        # disturbing anyone else's random state.
        devices = [transformer.device] if transformer.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            transformer.add_adapter(config, adapter_name=TRAIN_ADAPTER)
        params = [p for name, p in transformer.named_parameters() if "lora_" in name]
        for param in params:
            param.requires_grad_(True)
            # Adam moments and small updates need float32 even when the base weights are bf16.
            param.data = param.data.float()
        return params

    def _remove_adapter(self) -> None:
        pipe = self.pipe
        if pipe is None:
            return
        transformer = pipe.transformer
        if getattr(transformer, "peft_config", None):
            transformer.unload_lora()
        transformer.requires_grad_(False)
        if getattr(transformer, "gradient_checkpointing", False):
            transformer.disable_gradient_checkpointing()

    def _lora_bytes(self) -> bytes:
        from peft.utils import get_peft_model_state_dict

        transformer = self._require_pipe().transformer
        state = {
            key: value.detach().to("cpu").contiguous()
            for key, value in get_peft_model_state_dict(transformer, adapter_name=TRAIN_ADAPTER).items()
        }
        metadata = transformer.peft_config[TRAIN_ADAPTER].to_dict()
        with tempfile.TemporaryDirectory() as tmp:
            Flux2Pipeline.save_lora_weights(
                tmp,
                transformer_lora_layers=state,
                transformer_lora_adapter_metadata=metadata,
                weight_name=LORA_FILENAME,
            )
            return (Path(tmp) / LORA_FILENAME).read_bytes()

    # -- Engine protocol

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult:
        if call.task not in self.tasks:
            raise InputError("task", f"{self.name} does not support {call.task!r}")
        if not call.images:
            raise InputError("images", "LoRA training needs at least one image")
        options = call.options_as(LoraTrainingOptions)
        steps, learning_rate, rank, side = options.steps, options.learning_rate, options.rank, options.resolution
        caption = call.prompt.strip()

        with self._lock:
            pipe = self._require_pipe()
            try:
                with eager_execution(is_compiled(pipe.transformer)), qkv_unfused(pipe.transformer):
                    return self._train(call, on_step, pipe, steps, learning_rate, rank, side * side, caption)
            except (JobCanceledError, InputError):
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    release_memory()
                    raise EngineError(
                        f"{self.name}: out of memory training on {self.device}; lower the resolution or rank"
                    ) from exc
                raise EngineError(f"{self.name}: LoRA training failed: {exc}") from exc
            finally:
                self._remove_adapter()

    def _train(
        self,
        call: EngineCall,
        on_step: StepCallback,
        pipe: Any,
        steps: int,
        learning_rate: float,
        rank: int,
        area: int,
        caption: str,
    ) -> EngineResult:
        device = pipe._execution_device
        transformer = pipe.transformer
        samples = self._encode_images(call.images, area)
        with torch.no_grad():
            prompt_embeds, text_ids = pipe.encode_prompt(
                prompt=caption, device=device, num_images_per_prompt=1, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
        prompt_embeds = prompt_embeds.to(self.dtype)
        guidance = (
            torch.full([1], TRAIN_GUIDANCE, device=device, dtype=torch.float32)
            if transformer.config.guidance_embeds
            else None
        )

        params = self._add_adapter(rank, call.seed)
        if device.type == "cuda":
            # Activations of a 32B transformer do not fit otherwise; recomputing them is the usual trade.
            transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator(device=device).manual_seed(int(call.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        autocast = (
            torch.autocast(device_type=device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )

        losses: list[float] = []
        for step in range(steps):
            sample = samples[step % len(samples)]
            x0 = sample.latents
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32).to(x0.dtype)
            index = torch.randint(len(sample.sigmas), (1,), generator=generator, device=device)
            sigma = sample.sigmas[index]
            noisy = (1.0 - sigma) * x0 + sigma * noise
            with torch.enable_grad(), autocast:
                prediction = transformer(
                    hidden_states=noisy.to(self.dtype),
                    timestep=sigma.to(self.dtype),  # the pipeline passes t / 1000 == sigma
                    guidance=guidance,
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=sample.ids,
                    return_dict=False,
                )[0]
                loss = F.mse_loss(prediction.float(), (noise - x0).float())
            if not torch.isfinite(loss):
                raise EngineError(f"{self.name}: training diverged at step {step + 1}; lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            on_step(step + 1, steps, loss=losses[-1])

        data = self._lora_bytes()
        window = min(LOSS_WINDOW, len(losses))
        info = {
            "steps": steps,
            "final_loss": float(np.mean(losses[-window:])),
            "initial_loss": float(np.mean(losses[:window])),
            "learning_rate": learning_rate,
            "rank": rank,
            "images": len(samples),
            "resolution": [list(sample.size) for sample in samples],
            "caption": caption,
            "seed": call.seed,
        }
        return EngineResult(files=[(LORA_FILENAME, data, LORA_CONTENT_TYPE)], info=info)
