"""Training datasets (a zip of images, or one image), read within a memory and time budget.

A dataset costs the worker what it holds at the training size, not what its files claim: every
member's image header is read first (Pillow opens lazily: size and mode without decoding) and a
dataset whose images add up to more than ``max_dataset_pixels`` is refused before one pixel is
decoded; then the images are decoded one at a time, each scaled down to the training area as it
is decoded (:func:`~imagegate.media.codecs.decode_image` with ``fit_area``), and only that small
copy is kept. Every fault of the archive itself (bad CRC, encryption, an unknown compression
method, sizes that lie, bombs) is the request's: an :class:`InputError` naming the field.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, TypeVar

from PIL import Image

from imagegate.exceptions import InputError
from imagegate.media.codecs import ACCEPTED_INPUT_FORMATS, NOT_DECODABLE, decode_image
from imagegate.media.inputs import size_text

if TYPE_CHECKING:
    from imagegate.config import Settings

T = TypeVar("T")

# Only the first this many images of a zip are used.
MAX_DATASET_IMAGES = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_ZIP_MAGIC = b"PK\x03\x04"
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What zipfile (and the decompressors under it) raise on a damaged or hostile archive. bz2's
# errors are OSErrors; an encrypted member raises RuntimeError; an unknown method
# NotImplementedError.
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
)


@dataclass(frozen=True)
class DatasetLimits:
    max_member_bytes: int  # one file of the zip, uncompressed
    max_image_pixels: int  # one image, from its header
    max_total_pixels: int  # all images together, from their headers
    fit_area: int  # each image is decoded straight down to at most this many pixels
    min_side: int = 1  # ...and must keep both sides at least this long there
    max_images: int = MAX_DATASET_IMAGES

    @classmethod
    def from_settings(cls, settings: Settings, fit_area: int, min_side: int) -> DatasetLimits:
        return cls(
            max_member_bytes=settings.max_input_bytes,
            max_image_pixels=settings.max_input_pixels,
            max_total_pixels=settings.max_dataset_pixels,
            fit_area=fit_area,
            min_side=min_side,
        )


def read_dataset(data: bytes, *, field: str, limits: DatasetLimits, min_images: int) -> list[Image.Image]:
    """The dataset's images, RGB, each at most ``limits.fit_area`` pixels; InputError otherwise."""
    if data[:4] == _ZIP_MAGIC:
        return _read_zip(data, field, limits, min_images)
    _check_count(1, field, min_images)
    _check_total(_header_pixels(io.BytesIO(data), field, "", limits), field, limits)
    return [_decode(data, field, "", limits)]


def _read_zip(data: bytes, field: str, limits: DatasetLimits, min_images: int) -> list[Image.Image]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and not info.filename.startswith("__MACOSX")
            and info.filename.lower().endswith(IMAGE_SUFFIXES)
        ][: limits.max_images]
    except _ZIP_ERRORS as exc:
        raise InputError(field, "is not a readable zip archive") from exc
    for info in members:
        _check_member(info, field, limits)
    _check_count(len(members), field, min_images)
    total = 0
    for info in members:
        total += _member_call(archive, info, field, lambda stream, name=info.filename: _header_pixels(stream, field, name, limits))
        _check_total(total, field, limits)
    images = []
    for info in members:
        payload = _member_call(archive, info, field, lambda stream: stream.read(limits.max_member_bytes + 1))
        if len(payload) > limits.max_member_bytes:
            raise InputError(field, _too_large(info.filename, limits))
        images.append(_decode(payload, field, info.filename, limits))
    return images


def _check_member(info: zipfile.ZipInfo, field: str, limits: DatasetLimits) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise InputError(field, f"{name} is encrypted; password-protected zips are not supported")
    if info.compress_type not in _COMPRESSIONS:
        raise InputError(
            field, f"{name} uses compression method {info.compress_type}, which is not supported (use deflate or store)"
        )
    if info.file_size > limits.max_member_bytes:
        raise InputError(field, _too_large(name, limits))


def _member_call(archive: zipfile.ZipFile, info: zipfile.ZipInfo, field: str, read: Callable[[IO[bytes]], T]) -> T:
    """``read(stream)`` on one member, its archive faults as InputError naming the member."""
    try:
        with archive.open(info) as stream:
            return read(stream)
    except InputError:
        raise
    except EOFError as exc:
        raise InputError(field, f"{info.filename} is truncated, or the sizes the zip declares for it are wrong") from exc
    except _ZIP_ERRORS as exc:
        raise InputError(field, f"{info.filename} cannot be read from the zip ({exc})") from exc


def _header_pixels(stream: IO[bytes], field: str, name: str, limits: DatasetLimits) -> int:
    """Width × height from the image header, without decoding the image."""
    try:
        with Image.open(stream, formats=ACCEPTED_INPUT_FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise _named(field, name, f"image has too many pixels (more than the {limits.max_image_pixels:,} pixel limit)") from exc
    except (OSError, SyntaxError, struct.error, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise _named(field, name, NOT_DECODABLE) from exc
    if width * height > limits.max_image_pixels:
        raise _named(
            field,
            name,
            f"image is {width}x{height} = {width * height:,} pixels, more than the {limits.max_image_pixels:,} pixel limit",
        )
    return width * height


def _check_count(count: int, field: str, min_images: int) -> None:
    if count < min_images:
        raise InputError(field, f"needs at least {min_images} PNG/JPG images, found {count}")


def _check_total(total: int, field: str, limits: DatasetLimits) -> None:
    if total > limits.max_total_pixels:
        raise InputError(
            field,
            f"the images add up to more than the {limits.max_total_pixels:,} pixel limit for a dataset "
            f"(at least {total:,} pixels by their headers)",
        )


def _decode(data: bytes, field: str, name: str, limits: DatasetLimits) -> Image.Image:
    try:
        image = decode_image(data, field=field, max_pixels=limits.max_image_pixels, fit_area=limits.fit_area)
    except InputError as exc:
        raise _named(field, name, exc.reason) from exc
    if min(image.size) < limits.min_side:
        width, height = image.size
        raise _named(
            field,
            name,
            f"is {width}x{height} at the training size; both sides must be at least {limits.min_side} px "
            "(too small, or too narrow)",
        )
    return image


def _too_large(name: str, limits: DatasetLimits) -> str:
    return f"{name} is larger than the input size limit ({size_text(limits.max_member_bytes)})"


def _named(field: str, name: str, message: str) -> InputError:
    return InputError(field, f"{name}: {message}" if name else message)
