"""Stand-ins for the multimodal processors of two checkpoints, for machines without torchvision.

Two published checkpoints name a transformers processor whose vision half is torchvision-only, and
there is no CPU build of torchvision for this torch:

* Qwen-Image-Edit's ``processor`` is a ``Qwen2VLProcessor``: image processor, tokenizer and a video
  processor. The edit pipeline uses the first two; :class:`ImageOnlyQwen2VLProcessor` is the same
  class without the video half (its image processor is transformers' PIL implementation).
* FLUX.2 [dev]'s ``tokenizer`` is a ``PixtralProcessor`` (Mistral Small 3's), whose module imports
  torchvision. ``Flux2Pipeline`` only applies its chat template to text prompts (caption upsampling
  with images aside, which imagegate does not use); :class:`TextOnlyProcessor` does that with the
  processor's own tokenizer and chat template, token for token.

Both read the checkpoint's own files. Where torchvision is installed the loaders return nothing and
the checkpoints' own classes load.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _require_folder(source: str, subfolder: str) -> None:
    # A local checkpoint without the folder is missing weights (OSError, as from_pretrained's own
    # errors for absent files), not a broken tokenizer.
    local = Path(source).expanduser()
    if local.is_dir() and not (local / subfolder).is_dir():
        raise OSError(f"{source} has no {subfolder}/ folder")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with its image processor and tokenizer only.

    transformers derives a processor's parts from its ``__init__`` signature, so leaving
    ``video_processor`` out of it is what keeps the video half from being built. Text and images
    are processed by the parent's code unchanged.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class TextOnlyProcessor(ProcessorMixin):
    """A processor made of a tokenizer and a chat template: ``apply_chat_template`` on text-only
    messages gives the multimodal processor's tokens."""

    def __init__(self, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(tokenizer, chat_template=chat_template)


def qwen2vl_processor(source: str) -> dict[str, Any]:
    """``{"processor": ...}`` for a Qwen-Image-Edit checkpoint where torchvision is missing."""
    if torchvision_available():
        return {}
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _require_folder(source, "processor")
    processor = ImageOnlyQwen2VLProcessor(
        Qwen2VLImageProcessorPil.from_pretrained(source, subfolder="processor"),
        AutoTokenizer.from_pretrained(source, subfolder="processor"),
    )
    return {"processor": processor}


def pixtral_tokenizer(source: str) -> dict[str, Any]:
    """``{"tokenizer": ...}`` for a FLUX.2 [dev] checkpoint where torchvision is missing."""
    if torchvision_available():
        return {}
    from transformers import AutoTokenizer

    _require_folder(source, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    template = tokenizer.chat_template or _legacy_chat_template(source, "tokenizer")
    if not template:
        raise OSError(f"{source}: tokenizer/ has no chat template (chat_template.jinja)")
    return {"tokenizer": TextOnlyProcessor(tokenizer, chat_template=template)}


def _legacy_chat_template(source: str, subfolder: str) -> str | None:
    """Processors saved before chat_template.jinja kept the template in chat_template.json."""
    from transformers.utils import cached_file

    path = cached_file(source, "chat_template.json", subfolder=subfolder,
                       _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    return json.loads(Path(path).read_text()).get("chat_template")
