"""The contract between the worker and every model engine.

The catalog turns a validated request into an :class:`EngineCall` (diffusers' ``__call__``
vocabulary) whose ``options`` are the engine family's typed :class:`CallOptions`; the worker asks the
model manager for the engine bound to the model and calls it. Ranges are validated once, by the
catalog's request schemas: engines read these fields as given. An engine returns PIL images and
knows nothing of HTTP, billing or storage.

Values the catalog and the engines must agree on live here, once: what a megapixel is, the native
working area of the diffusion models, the restoration instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, TypeVar

from PIL import Image

from imagegate.exceptions import EngineError

# A megapixel as the endpoints speak of it (prices per "4 MP", upscale targets, output caps).
MEGAPIXEL = 1_000_000
# The area the diffusion models were trained around, their "1 MP": 1024x1024. Working sizes derived
# from an input's aspect ratio aim at multiples of it, and inputs larger than it are scaled down to it.
NATIVE_AREA = 1024 * 1024

# The instruction FLUX.1 Kontext restores photos with (flux-kontext-restore-image takes no prompt).
RESTORE_PROMPT = (
    "Restore this photo: remove scratches, dust, tears and noise, repair damaged areas, sharpen "
    "details and recover natural colours, keeping the people, composition and identity unchanged"
)

class StepCallback(Protocol):
    """Called after every step with (step, total_steps) and, from a trainer, the step's ``loss``.
    It raises imagegate.exceptions.JobCanceledError to stop the job at that step."""

    def __call__(self, step: int, total: int, *, loss: float | None = None) -> None: ...

# The area LoRA training works at: training images are scaled to at most this many pixels (512²,
# the usual FLUX LoRA resolution), and no side may be shorter than the minimum. The worker decodes
# dataset images straight down to that size.
LORA_TRAINING_SIDE = 512
LORA_TRAINING_AREA = LORA_TRAINING_SIDE * LORA_TRAINING_SIDE
LORA_TRAINING_MIN_SIDE = 64


@dataclass
class LoraSpec:
    """A LoRA already fetched to a local safetensors file."""

    path: str
    scale: float = 1.0


# --------------------------------------------------------------------------- per-family call options


@dataclass(frozen=True)
class CallOptions:
    """Base of the options one engine family reads beyond :class:`EngineCall`'s common fields."""


@dataclass(frozen=True)
class Flux1Options(CallOptions):
    # FLUX.1 is guidance-distilled: a negative prompt only acts through real classifier-free guidance,
    # which doubles the cost, so it is opt-in: None leaves the negative prompt unused.
    true_cfg_scale: float | None = None
    # Fill: paste the input's unmasked pixels back over the result (the mask as alpha).
    preserve_unmasked: bool = True


@dataclass(frozen=True)
class Flux2Options(CallOptions):
    # [klein]: the short schedule (4 steps on the step-distilled checkpoint, 28 on the base).
    turbo: bool = False
    # Size the output from the first reference image (capped at NATIVE_AREA).
    match_input_image: bool = False


@dataclass(frozen=True)
class QwenImageOptions(CallOptions):
    # Classifier-free guidance runs on the steps whose step / total lies in [start, end).
    cfg_range_start: float = 0.0
    cfg_range_end: float = 1.0
    # Edit: image guidance in the InstructPix2Pix sense; 1 is the plain pipeline.
    image_guidance_scale: float = 1.0


@dataclass(frozen=True)
class UpscaleOptions(CallOptions):
    upscale_mode: Literal["target", "factor"] = "target"
    target: float = 4  # megapixels, for "target"
    factor: float = 2.0  # per side, for "factor"
    enhance_details: bool = False
    enhance_realism: bool = True


@dataclass(frozen=True)
class LoraTrainingOptions(CallOptions):
    steps: int = 1000
    learning_rate: float = 1e-4
    rank: int = 16
    resolution: int = LORA_TRAINING_SIDE  # training side length; images are scaled to at most its square


Options = TypeVar("Options", bound=CallOptions)


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
    # The engine family's own options; None means that family's defaults.
    options: CallOptions | None = None

    def options_as(self, kind: type[Options]) -> Options:
        """``options`` as the family's type (its defaults when unset); another family's options are
        a wiring error between catalog and engine, never the client's."""
        if self.options is None:
            return kind()
        if not isinstance(self.options, kind):
            raise EngineError(f"{self.task} call carries {type(self.options).__name__}; this engine reads {kind.__name__}")
        return self.options


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
