"""Which GPUs a machine has, which of them workers get, and what a pinned worker runs on.

Read without importing torch (the serve process never does): the NVIDIA driver lists its GPUs
under ``/proc/driver/nvidia/gpus``; ``CUDA_VISIBLE_DEVICES``, when set, narrows that list. A
worker pinned to GPU ``n`` sees it alone (``CUDA_VISIBLE_DEVICES=n``, set before torch is
imported), as ``cuda:0``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal, Sequence

log = logging.getLogger("imagegate.devices")

VISIBLE_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")

GpuSelection = Literal["all"] | list[int]


def installed_gpus() -> list[int]:
    """The indices CUDA would number this process's GPUs by."""
    try:
        count = sum(1 for _ in NVIDIA_GPUS.iterdir())
    except OSError:
        count = 0
    visible = os.environ.get(VISIBLE_DEVICES_ENV)
    if visible is None:
        return list(range(count))
    indices = []
    for part in visible.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < count:
            indices.append(int(part))
    return indices


def worker_gpus(selection: GpuSelection) -> list[int]:
    """The GPUs to start one worker each on: every installed one for ``"all"``, the listed ones
    otherwise (listed ones that are not installed still get a worker, which says so and runs on the
    CPU), none for ``[]``."""
    if selection == "all":
        return installed_gpus()
    return list(dict.fromkeys(int(i) for i in selection))


def pin_to_gpu(gpu: int | None) -> None:
    """Make ``gpu`` the only GPU this process sees. Must run before torch is imported."""
    if gpu is None:
        return
    if "torch" in sys.modules:
        raise RuntimeError("pin_to_gpu() must run before torch is imported")
    os.environ[VISIBLE_DEVICES_ENV] = str(gpu)


def worker_device(configured: str, gpu: int | None, gpus_present: Sequence[int] | None = None) -> str:
    """The device a worker's engines run on. An explicit ``device`` setting wins; ``auto`` is
    ``cuda:0`` for a worker pinned to a GPU that exists (after pinning it is the only one the
    process sees), the first GPU for an unpinned worker on a GPU machine, the CPU otherwise."""
    configured = (configured or "auto").strip().lower()
    if configured != "auto":
        return configured
    present = installed_gpus_unpinned() if gpus_present is None else list(gpus_present)
    if gpu is not None:
        if gpu in present:
            return "cuda:0"
        log.warning("GPU %s was asked for, but this machine has %s; running on the CPU", gpu, present or "no GPU")
        return "cpu"
    return "cuda:0" if present else "cpu"


def installed_gpus_unpinned() -> list[int]:
    """The GPUs the driver has, whatever ``CUDA_VISIBLE_DEVICES`` this process was given."""
    try:
        return list(range(sum(1 for _ in NVIDIA_GPUS.iterdir())))
    except OSError:
        return []
