"""``imagegate weights pull``: fetch production weights into the Hugging Face cache."""

from __future__ import annotations

import sys

from imagegate.config import Settings


def pull(settings: Settings, model_ids: list[str]) -> int:
    from imagegate.catalog import MODELS

    status = 0
    for model_id in model_ids:
        spec = MODELS.get(model_id)
        if spec is None:
            print(f"unknown model id: {model_id}", file=sys.stderr)
            status = 2
            continue
        source = settings.model(model_id).weights or spec.default_weights
        if source.startswith(("builtin:", "/", "./", "../")):
            print(f"{model_id}: {source} needs no download")
            continue
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(source)
        except Exception as exc:  # network, auth (gated repos) or disk: say which and go on
            print(f"{model_id}: could not download {source}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{model_id}: {source} -> {path}")
    return status
