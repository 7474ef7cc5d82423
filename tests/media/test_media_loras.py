"""The LoRA cache: validated before anything is kept, failures leave nothing behind, the first
failure ends the request, and the cache stays within its bound (least recently used go)."""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from imagegate.exceptions import InputError
from imagegate.media.inputs import InputFetcher
from imagegate.media.loras import LoraCache, check_lora_file

from .support import LoopbackServer

MiB = 1024 * 1024


def lora_bytes(size: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return save({
        "transformer.blocks.0.attn.to_q.lora_A.weight": rng.standard_normal((4, size)).astype(np.float16),
        "transformer.blocks.0.attn.to_q.lora_B.weight": rng.standard_normal((size, 4)).astype(np.float16),
    })


def header_only(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD = lora_bytes()
NOT_LORA = [
    ("text", b"hello world, not safetensors", "is not a valid safetensors file"),
    ("old-check-passes", b"\x10\0\0\0\0\0\0\0{not json really}", "is not a valid safetensors file"),
    ("truncated", GOOD[:-7], "file not fully covered"),
    ("trailing-bytes", GOOD + b"extra", "file not fully covered"),
    ("header-length-lies", struct.pack("<Q", 10**12) + GOOD[8:], "header too large"),
    ("offsets-past-the-end", header_only({"x.lora_A.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "not a valid safetensors file"),
    ("no-tensors", header_only({}), "without tensors"),
    ("integer-tensors", save({"x.lora_A.weight": np.zeros(4, dtype=np.int64)}), "non-floating-point"),
    ("not-named-like-a-lora", save({"model.weight": np.zeros(4, dtype=np.float32)}), "holds no LoRA weights"),
]


@pytest.fixture
def fetcher() -> InputFetcher:
    return InputFetcher(allow_private=True, max_bytes=MiB, timeout=5.0)


def serve(server: LoopbackServer, data: bytes) -> str:
    name = f"lora-{uuid.uuid4().hex}"
    server.files[name] = (data, "application/octet-stream")
    return server.url(f"/img/{name}")


def cached(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("case, data, words", NOT_LORA, ids=[c[0] for c in NOT_LORA])
def test_invalid_files_fail_naming_the_field_and_leave_nothing(
    tmp_path: Path, fetcher: InputFetcher, http_server: LoopbackServer, case: str, data: bytes, words: str
) -> None:
    cache = LoraCache(tmp_path / "loras", 10 * MiB)
    with pytest.raises(InputError) as info:
        cache.fetch_all(fetcher, [(serve(http_server, data), "loras[0].path")])
    assert info.value.field == "loras[0].path" and words in info.value.reason, info.value.reason
    assert cached(cache.directory) == []


def test_a_valid_lora_is_kept_under_its_content_hash(tmp_path: Path, fetcher: InputFetcher, http_server: LoopbackServer) -> None:
    cache = LoraCache(tmp_path / "loras", 10 * MiB)
    (path,) = cache.fetch_all(fetcher, [(serve(http_server, GOOD), "loras[0].path")])
    assert path.read_bytes() == GOOD and path.parent == cache.directory and path.suffix == ".safetensors"
    # The same bytes from another URL are the same file.
    assert cache.fetch_all(fetcher, [(serve(http_server, GOOD), "loras[0].path")]) == [path]
    assert cached(cache.directory) == [path.name]
    check_lora_file(path, "loras[0].path")


def test_the_first_failure_ends_the_request(tmp_path: Path, fetcher: InputFetcher, http_server: LoopbackServer) -> None:
    cache = LoraCache(tmp_path / "loras", 10 * MiB)
    bad, good = serve(http_server, b"\x10\0\0\0\0\0\0\0{not json really}"), serve(http_server, lora_bytes(seed=1))
    with pytest.raises(InputError) as info:
        cache.fetch_all(fetcher, [(bad, "loras[0].path"), (good, "loras[1].path")])
    assert info.value.field == "loras[0].path"
    assert good.removeprefix(http_server.base_url) not in http_server.requests
    assert cached(cache.directory) == []


def test_the_cache_keeps_the_most_recently_used_within_its_bound(
    tmp_path: Path, fetcher: InputFetcher, http_server: LoopbackServer
) -> None:
    files = [lora_bytes(size=4096, seed=i) for i in range(4)]  # ~64 KB each
    size = len(files[0])
    cache = LoraCache(tmp_path / "loras", int(size * 3.5))
    urls = [serve(http_server, data) for data in files]
    (first,) = cache.fetch_all(fetcher, [(urls[0], "loras[0].path")])
    (second,) = cache.fetch_all(fetcher, [(urls[1], "loras[0].path")])
    os.utime(first, (time.time() - 60, time.time() - 60))
    os.utime(second, (time.time() - 30, time.time() - 30))
    cache.fetch_all(fetcher, [(urls[0], "loras[0].path")])  # used again: now the most recent
    third, fourth = cache.fetch_all(fetcher, [(urls[2], "loras[0].path"), (urls[3], "loras[1].path")])
    # Over the bound: the least recently used (second) went; a request's own files always stay.
    assert cached(cache.directory) == sorted(p.name for p in (first, third, fourth))
    assert not second.exists()
    total = sum(p.stat().st_size for p in cache.directory.iterdir())
    assert total <= size * 3.5


def test_a_request_larger_than_the_cache_still_gets_its_files(tmp_path: Path, fetcher: InputFetcher, http_server: LoopbackServer) -> None:
    cache = LoraCache(tmp_path / "loras", 10)
    paths = cache.fetch_all(fetcher, [(serve(http_server, lora_bytes(seed=i)), f"loras[{i}].path") for i in range(2)])
    assert all(p.exists() for p in paths)
    cache.fetch_all(fetcher, [(serve(http_server, lora_bytes(seed=7)), "loras[0].path")])
    assert not any(p.exists() for p in paths)
