"""Decoding untrusted image bytes into plain RGB/L images, and encoding outputs.

Decoding is where hostile input meets native code, so it is deliberately narrow: a fixed list
of container formats, a pixel budget checked from the header before any pixel is decoded, and
every decoder failure reported as an :class:`~imagegate.exceptions.InputError` naming the
request field the bytes came from.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from imagegate.exceptions import InputError

# Pillow format ids we are willing to parse. Anything else (EPS, which shells out to
# Ghostscript; PSD; ICO; PPM; ...) is refused before its plugin sees more than the magic bytes.
# (The JPEG opener also yields MPO, Pillow's label for camera JPEGs with a second picture.)
_WANTED_INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "BMP", "TIFF")
Image.init()
# A Pillow built without one of these (AVIF is the usual one) simply does not accept it.
ACCEPTED_INPUT_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_INPUT_FORMATS if f in Image.OPEN)

NOT_DECODABLE = "is not a decodable image (JPEG, PNG, WebP, GIF or AVIF)"

# Errors Pillow's decoders raise on malformed data; a bare `except Exception` would also hide
# our own bugs.
_DECODER_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class OutputFormat:
    name: str  # canonical name, as stored on jobs and shown to clients
    content_type: str
    extension: str  # without the dot
    pil_format: str
    lossy: bool
    default_quality: int | None
    modes: tuple[str, ...]  # modes the encoder takes as they are; others are converted


_JPEG = OutputFormat("jpeg", "image/jpeg", "jpg", "JPEG", True, 90, ("RGB", "L"))
_PNG = OutputFormat("png", "image/png", "png", "PNG", False, None, ("RGB", "RGBA", "L"))
_WEBP = OutputFormat("webp", "image/webp", "webp", "WEBP", True, 90, ("RGB", "RGBA"))
# AVIF's quality scale is steeper than JPEG's: 80 is already visually lossless and half the size.
_AVIF = OutputFormat("avif", "image/avif", "avif", "AVIF", True, 80, ("RGB", "RGBA"))

OUTPUT_FORMATS: Mapping[str, OutputFormat] = MappingProxyType(
    {"jpeg": _JPEG, "jpg": _JPEG, "png": _PNG, "webp": _WEBP, "avif": _AVIF}
)


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str  # without the dot, e.g. "jpg"


def output_format(fmt: str) -> OutputFormat:
    """The :class:`OutputFormat` for a name such as ``"JPG"``; ValueError for unknown names."""
    try:
        return OUTPUT_FORMATS[fmt.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise ValueError(f"unknown output format {fmt!r}; expected one of {known}") from None


def decode_image(data: bytes, *, field: str, max_pixels: int, fit_area: int | None = None) -> Image.Image:
    """Decode untrusted bytes into an RGB image with its pixels loaded.

    The first frame of an animation is used, EXIF orientation is applied, embedded colour
    profiles are converted to sRGB and transparency is composited on white. With ``fit_area``
    the image is scaled down (aspect kept) to at most that many pixels while it is decoded: a
    JPEG decodes at a fraction of its size in the first place, anything else is box-reduced in
    its own mode before it is converted, so a large input never exists at full size in RGB.
    """
    img = _open_first_frame(data, field=field, max_pixels=max_pixels, fit_area=fit_area)
    if fit_area is None:
        return _detached(_to_rgb(img, field=field), img)
    return _fitted(_to_rgb(img, field=field), fit_area)


def decode_mask(data: bytes, *, field: str, max_pixels: int) -> Image.Image:
    """Decode untrusted bytes into a single-channel ("L") mask with its pixels loaded.

    Transparent areas become white, because compositing on white is what :func:`decode_image`
    does: a mask whose edit region is drawn as transparency (the hosted APIs' convention) reads
    the same as one drawn in white (the diffusers convention).
    """
    img = _open_first_frame(data, field=field, max_pixels=max_pixels)
    if img.mode in ("L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        mask = _to_8bit_gray(img, field=field)
    else:
        mask = _to_rgb(img, field=field).convert("L")
    return _detached(mask, img)


def encode_image(img: Image.Image, fmt: str, quality: int | None = None) -> EncodedImage:
    """Encode ``img`` as ``fmt`` (jpeg/jpg, png, webp, avif) with all metadata stripped.

    ``quality`` (0-100) applies to the lossy formats and is ignored for PNG.
    """
    spec = output_format(fmt)
    if quality is not None and not 0 <= quality <= 100:
        raise ValueError(f"quality must be between 0 and 100, got {quality}")

    # A fresh copy with empty `info`: several Pillow encoders fall back to im.info for EXIF,
    # ICC and XMP, and generated images must not leak whatever an input image carried.
    clean = _encodable(img, spec).copy()
    clean.info = {}

    params: dict[str, object] = {}
    if spec.lossy:
        params["quality"] = spec.default_quality if quality is None else quality
    if spec is _PNG:
        params["compress_level"] = 6

    buf = io.BytesIO()
    clean.save(buf, format=spec.pil_format, **params)
    return EncodedImage(data=buf.getvalue(), content_type=spec.content_type, extension=spec.extension)


def _open_first_frame(data: bytes, *, field: str, max_pixels: int, fit_area: int | None = None) -> Image.Image:
    if not data:
        raise InputError(field, "is empty; expected an image")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between its own limit and twice that; our
            # max_pixels check below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_INPUT_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image has too many pixels (more than the {max_pixels:,} pixel limit)") from exc
    except _DECODER_ERRORS as exc:
        raise InputError(field, NOT_DECODABLE) from exc

    # Image.open has read only the header: refuse huge canvases before decoding a single pixel.
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InputError(field, NOT_DECODABLE)
    if width * height > max_pixels:
        raise InputError(
            field,
            f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} pixel limit",
        )

    try:
        img.seek(0)
        if fit_area is not None:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still at least the fitted size.
            img.draft(img.mode, _fitted_size(img.size, fit_area))
        img.load()
        orientation = _orientation(img)
        if fit_area is not None:
            img = _reduced(img, fit_area)
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image has too many pixels (more than the {max_pixels:,} pixel limit)") from exc
    except _DECODER_ERRORS as exc:
        raise InputError(field, NOT_DECODABLE) from exc
    method = _ORIENTATION_TRANSPOSE.get(orientation) if orientation is not None else None
    return img if method is None else img.transpose(method)


def _orientation(img: Image.Image) -> int | None:
    # Read before any reduction (a reduced copy has no EXIF) and applied after it, so a rotated
    # photo is never copied at full size.
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except _DECODER_ERRORS:
        return None  # a malformed EXIF block should not cost the user an otherwise good image
    return value if isinstance(value, int) else None


# EXIF orientation -> the transpose that shows the picture upright (ImageOps.exif_transpose's table).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce averages in place; others are converted first (1-bit: to 8-bit grey, the
# same memory in Pillow).
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


def _fitted_size(size: tuple[int, int], area: int) -> tuple[int, int]:
    width, height = size
    if width * height <= area:
        return width, height
    scale = (area / (width * height)) ** 0.5
    rounded = max(1, round(width * scale)), max(1, round(height * scale))
    if rounded[0] * rounded[1] <= area:
        return rounded
    return max(1, int(width * scale)), max(1, int(height * scale))


def _reduced(img: Image.Image, area: int) -> Image.Image:
    """A cheap integer box reduction towards ``area`` (the exact fit is resampled afterwards)."""
    width, height = img.size
    factor = int((width * height / area) ** 0.5)
    if factor < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")
    if img.mode not in _REDUCIBLE_MODES:
        return img
    return img.reduce(factor)


def _fitted(img: Image.Image, area: int) -> Image.Image:
    size = _fitted_size(img.size, area)
    fitted = img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)
    fitted.load()
    return fitted


def _to_rgb(img: Image.Image, *, field: str) -> Image.Image:
    mode = img.mode
    try:
        if mode == "RGB":
            return _icc_to_srgb(img)
        if mode == "CMYK":
            return _icc_to_srgb(img) if img.info.get("icc_profile") else img.convert("RGB")
        if mode in ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _to_8bit_gray(img, field=field).convert("RGB")
        if mode == "P":
            has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
            return _on_white(img.convert("RGBA")) if has_alpha else img.convert("RGB")
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            return _on_white(img.convert("RGBA"))
        return img.convert("RGB")
    except ValueError as exc:  # a mode Pillow cannot convert without a profile, e.g. LAB
        raise InputError(field, f"has an unsupported colour mode ({mode})") from exc


def _to_8bit_gray(img: Image.Image, *, field: str) -> Image.Image:
    if img.mode in ("L", "1"):
        return img.convert("L")
    if img.mode.startswith("I"):
        # 16-bit greyscale (PNG, TIFF): Pillow's convert("L") clips at 255 instead of scaling.
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if img.mode == "F":
        # Float TIFFs are conventionally 0..1.
        return img.point(lambda v: v * 255).convert("L")
    raise InputError(field, f"has an unsupported colour mode ({img.mode})")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


_SRGB = ImageCms.createProfile("sRGB")


def _icc_to_srgb(img: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile, so wide-gamut (P3, Adobe RGB) and CMYK
    inputs keep their colours once we drop the profile on output."""
    icc = img.info.get("icc_profile")
    if not icc:
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(img, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A broken profile is common in the wild; the untransformed pixels are the best guess.
        return img.convert("RGB")
    assert converted is not None  # profileToProfile returns None only with inPlace=True
    return converted


def _detached(result: Image.Image, source: Image.Image) -> Image.Image:
    # An untouched ImageFile still references the decoder (and, for animations, the other
    # frames); hand callers a plain in-memory image.
    if result is source:
        result = source.copy()
    result.load()
    return result


def _encodable(img: Image.Image, spec: OutputFormat) -> Image.Image:
    if img.mode in spec.modes:
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha and "RGBA" in spec.modes:
        return img.convert("RGBA")
    if has_alpha:
        return _on_white(img.convert("RGBA"))
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit_gray(img, field="image").convert("RGB")
    return img.convert("RGB")
