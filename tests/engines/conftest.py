from __future__ import annotations

import os

# Before anything imports huggingface_hub: it reads the flag once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def flux1_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from imagegate.fixtures.flux1 import build_flux1, build_flux1_fill, build_flux1_kontext

    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "t2i": build_flux1(root),
        "schnell": build_flux1(root, guidance_embeds=False),
        "fill": build_flux1_fill(root),
        "kontext": build_flux1_kontext(root),
    }
