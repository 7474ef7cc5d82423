"""Helpers the engine tests share: pixel comparisons, step callbacks, test pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from imagegate.exceptions import JobCanceledError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs(a: Image.Image, b: Image.Image | np.ndarray) -> float:
    other = b if isinstance(b, np.ndarray) else pixels(b)
    return float(np.abs(pixels(a) - other).mean())


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(pixels(a), pixels(b))


def noop(step: int, total: int) -> None:
    pass


class Steps:
    """An engine's ``on_step``: records ``(step, total)`` (and a trainer's losses) and cancels the
    job at ``cancel_at``."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.seen: list[tuple[int, int]] = []
        self.losses: list[float] = []
        self.cancel_at = cancel_at

    def __call__(self, step: int, total: int, *, loss: float | None = None) -> None:
        self.seen.append((step, total))
        if loss is not None:
            self.losses.append(loss)
        if self.cancel_at is not None and step >= self.cancel_at:
            raise JobCanceledError("canceled by client")


def gradient(width: int = 64, height: int = 64, blue: int = 90) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(255, 0, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.full_like(x, blue)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def solid(color, size=(64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)
