"""How diffusers engines load: the speed options the settings choose (``torch_compile``, ``fuse_qkv``,
``fp8``, ``channels_last_vae``, ``tf32``, ``warmup_sizes``), passed by the model manager to every
engine factory. Free of torch, so the settings can build them in processes that never load a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.exceptions import EngineError

_WARMUP_SIZE = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*(?:\*\s*(\d+))?\s*")


@dataclass(frozen=True)
class WarmupSize:
    """A size (and batch size) a compiled engine runs once at load, so requests at it never compile."""

    width: int
    height: int
    batch: int = 1

    @classmethod
    def parse(cls, text: str) -> WarmupSize:
        """``"1024x1024"`` or ``"1024x1024*4"`` (4 images per call)."""
        match = _WARMUP_SIZE.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not WIDTHxHEIGHT or WIDTHxHEIGHT*BATCH (e.g. 1024x1024*4)")
        width, height, batch = int(match[1]), int(match[2]), int(match[3] or 1)
        if not (16 <= width <= 4096 and 16 <= height <= 4096 and 1 <= batch <= 16):
            raise ValueError(f"{text!r}: sides must be 16-4096 and the batch 1-16")
        return cls(width, height, batch)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}" + (f"*{self.batch}" if self.batch != 1 else "")


@dataclass(frozen=True)
class EngineOptions:
    """Speed options an engine factory applies when it loads a pipeline (``DiffusersEngine.load(...,
    options=EngineOptions(...))``, or a mapping with these keys).

    * ``fuse_qkv`` (default on): one matmul for each attention's query/key/value projections instead
      of three, on transformers whose attention honours it (FLUX.1, FLUX.2; not Qwen-Image). Fused one
      attention module at a time, its separate projections becoming views of the fused weight, so it
      costs no memory, not even for a moment; LoRAs (which target the separate projections) run
      those calls unfused. Same arithmetic, so it is on everywhere, the CPU included.
    * ``compile`` (default off): regional ``torch.compile`` of the transformer's repeated blocks (one
      compiled block serves all of them; graph breaks allowed). Compiled engines run
      ``warmup_sizes`` at load; later compilations are counted and logged, and a model that hits
      torch's recompile limit says so and serves new shapes eagerly. Calls with LoRAs, and caches whose
      hooks sit inside the blocks (TaylorSeer), run eagerly; First Block Cache runs on the compiled
      blocks.
    * ``fp8`` (default off): torchao float8 dynamic quantisation with per-row scales of the
      transformer's Linear layers. Row-wise float8 needs a CUDA GPU of compute capability 9.0 or newer
      (Hopper, Blackwell) and torchao (the ``gpu`` extra): checked at load, where an engine that
      cannot use it says why and serves bfloat16. Halves the transformer's memory; replaces
      ``fuse_qkv`` (fp8 weights are not fused). Engines that train (LoRA) never quantise.
    * ``channels_last_vae`` (default on, CUDA only): the VAE's 2-D convolutions in NHWC (cuDNN's
      fast layout). VAEs with 3-D convolutions (Qwen-Image) are left alone.
    * ``tf32`` (default on, CUDA only): TF32 tensor cores for the float32 matmuls and convolutions
      that remain in a bf16 pipeline, set through torch's ``fp32_precision`` API for the duration of
      each call and restored after it, so one engine's choice never reaches another.
    * ``warmup_sizes`` (default 1024x1024): what a compiled engine runs at load.
    * ``compile_backend``: the ``torch.compile`` backend; ``"inductor"`` in production, ``"eager"``
      to exercise the compile path without code generation (tests, ``benchmarks/gpu.py --tiny``).
    """

    compile: bool = False
    fuse_qkv: bool = True
    fp8: bool = False
    channels_last_vae: bool = True
    tf32: bool = True
    warmup_sizes: tuple[WarmupSize, ...] = (WarmupSize(1024, 1024),)
    compile_backend: str = "inductor"

    @classmethod
    def coerce(cls, value: EngineOptions | Mapping[str, Any] | None) -> EngineOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise EngineError(f"unknown engine option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            values = dict(value)
            if "warmup_sizes" in values:
                values["warmup_sizes"] = tuple(
                    size if isinstance(size, WarmupSize) else WarmupSize.parse(size) for size in values["warmup_sizes"]
                )
            return cls(**values)
        raise EngineError(f"engine options must be EngineOptions or a mapping, not {type(value).__name__}")

    @classmethod
    def eager(cls) -> EngineOptions:
        """Every optimisation off: the baseline ``benchmarks/gpu.py`` compares against."""
        return cls(compile=False, fuse_qkv=False, fp8=False, channels_last_vae=False, tf32=False, warmup_sizes=())

    def for_device(self, device: str) -> EngineOptions:
        """What ``device`` can use: fp8, channels-last and TF32 only mean something on CUDA."""
        if str(device).split(":")[0] == "cuda":
            return self
        return dataclasses.replace(self, fp8=False, channels_last_vae=False, tf32=False)
