"""LoRA files a request names: fetched through the guarded fetcher, validated before they are
kept, cached by content, and the cache bounded.

A download is written to a temporary file in the cache directory, validated there as safetensors
(the header parsed and every tensor's dtype, shape and byte range checked against the file, by the
safetensors library) holding LoRA weights, and only then renamed to its content hash; whatever
fails is deleted. The first LoRA of a request that fails ends the request: the rest are not
fetched. After a request's LoRAs are in, the least recently used files go until the cache is
within ``lora_cache_gb`` (the request's own files stay, whatever their size).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imagegate.exceptions import InputError

if TYPE_CHECKING:
    from imagegate.config import Settings
    from imagegate.media.inputs import InputFetcher

log = logging.getLogger("imagegate.loras")

SUFFIX = ".safetensors"
_INCOMING_PREFIX = ".incoming-"
# A temporary file this old belongs to a worker that died mid-download.
STALE_INCOMING_SECONDS = 3600.0
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class LoraCache:
    directory: Path
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraCache:
        return cls(settings.data_dir / "loras", int(settings.lora_cache_gb * 2**30))

    def fetch_all(self, fetcher: InputFetcher, sources: Sequence[tuple[str, str]]) -> list[Path]:
        """The local files of ``sources`` ((url, field) pairs), in order; InputError naming the
        field of the first that cannot be fetched or is not a LoRA (the rest are not fetched)."""
        paths = [self._fetch(fetcher, url, field) for url, field in sources]
        if paths:
            self._evict(keep=set(paths))
        return paths

    def _fetch(self, fetcher: InputFetcher, url: str, field: str) -> Path:
        data = fetcher.fetch_bytes(url, field=field)
        path = self.directory / f"{hashlib.sha256(data).hexdigest()}{SUFFIX}"
        try:
            # A hit. The modification time is the cache's "last used" (access times are often
            # not kept).
            os.utime(path)
            return path
        except FileNotFoundError:
            pass
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=_INCOMING_PREFIX, suffix=".tmp")
        incoming = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            check_lora_file(incoming, field)
            os.replace(incoming, path)
        finally:
            incoming.unlink(missing_ok=True)
        return path

    def _evict(self, keep: set[Path]) -> None:
        entries = []
        now = time.time()
        for entry in self.directory.iterdir():
            try:
                stat = entry.stat()
            except FileNotFoundError:  # another worker evicted it meanwhile
                continue
            if entry.name.startswith(_INCOMING_PREFIX):
                if now - stat.st_mtime > STALE_INCOMING_SECONDS:
                    entry.unlink(missing_ok=True)
                continue
            if entry.suffix == SUFFIX:
                entries.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            if entry in keep:
                continue
            entry.unlink(missing_ok=True)
            total -= size
            log.info("LoRA cache: evicted %s (%d bytes; lora_cache_gb)", entry.name, size)


def check_lora_file(path: Path, field: str) -> None:
    """InputError unless ``path`` is a complete safetensors file of floating-point tensors, some of
    them named as LoRA weights are (``…lora_A…``/``…lora_B…``, ``…lora_down…``/``…lora_up…``)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as tensors:
            names = list(tensors.keys())
            dtypes = {name: tensors.get_slice(name).get_dtype() for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        raise InputError(field, f"is not a valid safetensors file ({reason})") from exc
    if not names:
        raise InputError(field, "is a safetensors file without tensors, not a LoRA")
    odd = sorted(name for name, dtype in dtypes.items() if dtype not in _FLOAT_DTYPES)
    if odd:
        raise InputError(field, f"holds non-floating-point tensors ({odd[0]}: {dtypes[odd[0]]}), not LoRA weights")
    if not any("lora" in name.lower() for name in names):
        raise InputError(field, f"holds no LoRA weights (no tensor is named like one; the first is {names[0]!r})")
