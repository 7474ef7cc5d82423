"""The contract between the worker and every model engine.

The worker turns a validated request into an :class:`EngineCall` (diffusers' ``__call__``
vocabulary), asks the model manager for the engine bound to the model, and calls it. An engine
returns PIL images and knows nothing of HTTP, billing or storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from PIL import Image

# Called after every denoising step with (step, total_steps). It raises
# imagegate.exceptions.JobCanceledError to stop the job at that step.
StepCallback = Callable[[int, int], None]

# The area LoRA training works at: training images are scaled to at most this many pixels (512²,
# the usual FLUX LoRA resolution), and no side may be shorter than the minimum. The worker decodes
# dataset images straight down to that size.
LORA_TRAINING_AREA = 512 * 512
LORA_TRAINING_MIN_SIDE = 64


@dataclass
class LoraSpec:
    """A LoRA already fetched to a local safetensors file."""

    path: str
    scale: float = 1.0


@dataclass
class EngineCall:
    task: str  # "text-to-image" | "image-to-image" | "inpaint" | "edit" | "restore" | "upscale" | "train-lora"
    prompt: str = ""
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    images: list[Image.Image] = field(default_factory=list)  # input / reference images, main first
    mask: Image.Image | None = None
    strength: float | None = None
    loras: list[LoraSpec] = field(default_factory=list)
    acceleration: str = "none"  # none | regular | high
    # Family-specific knobs (cfg_range_start/end, image_guidance_scale, upscale_mode, target,
    # factor, enhance_details, enhance_realism, steps, learning_rate, turbo, ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineResult:
    images: list[Image.Image] = field(default_factory=list)
    # Non-image artefacts (a trained LoRA): (filename, bytes, content type).
    files: list[tuple[str, bytes, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """A loaded, warm model. ``memory_bytes`` feeds the manager's LRU budget."""

    memory_bytes: int

    def __call__(self, call: EngineCall, on_step: StepCallback) -> EngineResult: ...

    def unload(self) -> None: ...


class EngineFactory(Protocol):
    """Loads an engine from a weights source: a hub id or a local directory."""

    def __call__(self, source: str, *, device: str, dtype: str) -> Engine: ...
