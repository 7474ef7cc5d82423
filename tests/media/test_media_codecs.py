"""decode_image / decode_mask / encode_image on real files in every supported format."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image, ImageChops, ImageStat

from imagegate.exceptions import InputError
from imagegate.media.codecs import OUTPUT_FORMATS, EncodedImage, decode_image, decode_mask, encode_image

from .support import BLUE, GREEN, RED, YELLOW, bilevel_png, encode_with_pillow, quadrant_image

FIELD = "image"
LIMIT = 40_000_000
NOT_DECODABLE = f"{FIELD}: is not a decodable image (JPEG, PNG, WebP, GIF or AVIF)"


def close(a: object, b: tuple[int, ...], tol: int = 24) -> bool:
    assert isinstance(a, tuple), a
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def decode(data: bytes, max_pixels: int = LIMIT) -> Image.Image:
    return decode_image(data, field=FIELD, max_pixels=max_pixels)


def expect_input_error(data: bytes, max_pixels: int = LIMIT) -> InputError:
    with pytest.raises(InputError) as info:
        decode(data, max_pixels)
    assert info.value.field == FIELD
    return info.value


def mean_abs_error(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def photo_like(size: tuple[int, int] = (192, 128)) -> Image.Image:
    """Gradients plus noise: detail that lossy quality settings visibly trade away."""
    gradient = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.radial_gradient("L").resize(size),
        ),
    )
    noise = Image.effect_noise(size, 60).convert("RGB")
    return Image.blend(gradient, noise, 0.35)


# --------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("name", ["png", "jpeg", "webp", "gif", "avif", "bmp", "tiff"])
def test_decodes_every_accepted_format(sample_images: dict[str, bytes], name: str) -> None:
    img = decode(sample_images[name])
    assert img.mode == "RGB" and img.size == (64, 48)
    tol = 40 if name == "gif" else 24
    for xy, colour in [((8, 8), RED), ((56, 8), GREEN), ((8, 40), BLUE), ((56, 40), YELLOW)]:
        assert close(img.getpixel(xy), colour, tol), (name, xy, img.getpixel(xy))


def test_result_is_a_plain_loaded_image(sample_images: dict[str, bytes]) -> None:
    img = decode(sample_images["png"])
    # Not an ImageFile bound to a decoder: safe to keep after the bytes are gone, and to pickle.
    assert type(img) is Image.Image
    assert img.getpixel((0, 0)) == RED


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE, GREEN)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 3
    img = decode(buf.getvalue())
    assert img.mode == "RGB" and close(img.getpixel((10, 10)), RED, 40)


def test_animated_webp_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in (BLUE, RED)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 2
    img = decode(buf.getvalue())
    assert close(img.getpixel((10, 10)), BLUE, 8)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure magenta + yellow = red
    data = encode_with_pillow(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode(data)
    assert img.mode == "RGB" and close(img.getpixel((8, 8)), (255, 0, 0), 12)


def test_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    img16 = Image.new("I;16", (8, 4), 65535)
    img16.paste(Image.new("I;16", (4, 4), 32768), (4, 0))
    data = encode_with_pillow(img16, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode(data)
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (255, 255, 255)
    assert close(img.getpixel((6, 1)), (128, 128, 128), 1)  # clipping would give 255


def test_48_bit_rgb_png() -> None:
    # Pillow has no 16-bit RGB mode; a hand-made 16-bit-per-channel PNG must still decode.
    import struct
    import zlib

    w, h = 4, 2
    pixel = struct.pack(">HHH", 65535, 0, 32768)
    raw = b"".join(b"\0" + pixel * w for _ in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    img = decode(data)
    assert img.mode == "RGB" and close(img.getpixel((0, 0)), (255, 0, 128), 1)


def test_palette_with_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 5, 10))
    data = encode_with_pillow(rgba.convert("P"), "PNG")  # palette PNG with a transparent index
    assert Image.open(io.BytesIO(data)).mode == "P"
    img = decode(data)
    assert img.getpixel((8, 5)) == (255, 255, 255)
    assert close(img.getpixel((2, 5)), (200, 0, 0), 4)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "AVIF")])
def test_alpha_is_composited_on_white(mode: str, fmt: str) -> None:
    colour = (0, 0, 0, 0) if mode == "RGBA" else (0, 0)
    img = Image.new(mode, (16, 16), colour)
    opaque = (0, 0, 0, 255) if mode == "RGBA" else (0, 255)
    half = (0, 0, 0, 128) if mode == "RGBA" else (0, 128)
    img.paste(opaque, (0, 0, 8, 16))
    img.paste(half, (8, 0, 12, 16))
    params = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "AVIF" else {}
    out = decode(encode_with_pillow(img, fmt, **params))
    assert out.mode == "RGB"
    assert close(out.getpixel((2, 8)), (0, 0, 0), 6)
    assert close(out.getpixel((14, 8)), (255, 255, 255), 6)
    assert close(out.getpixel((10, 8)), (127, 127, 127), 10)


def test_exif_orientation_is_applied() -> None:
    src = quadrant_image((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode_with_pillow(src, "JPEG", quality=95, exif=exif.tobytes())
    img = decode(data)
    assert img.size == (20, 40)
    # After a clockwise turn the old top-left (red) quadrant is at the top right.
    assert close(img.getpixel((15, 5)), RED)
    assert close(img.getpixel((5, 5)), BLUE)


def test_broken_colour_profile_does_not_fail_the_image() -> None:
    data = encode_with_pillow(quadrant_image(), "PNG", icc_profile=b"not a profile at all")
    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == b"not a profile at all"
    img = decode(data)
    assert close(img.getpixel((8, 8)), RED, 0)


def test_srgb_profile_keeps_colours() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = decode(encode_with_pillow(quadrant_image(), "PNG", icc_profile=srgb))
    assert close(img.getpixel((8, 8)), RED, 3)


@pytest.mark.parametrize("name", ["png", "jpeg", "webp", "gif", "avif", "tiff"])
def test_truncated_files_are_refused(sample_images: dict[str, bytes], name: str) -> None:
    data = sample_images[name]
    err = expect_input_error(data[: len(data) // 2])
    assert str(err) == NOT_DECODABLE


@pytest.mark.parametrize(
    "data",
    [
        b"hello, world",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        os.urandom(4096),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    assert str(expect_input_error(data)) == NOT_DECODABLE


def test_empty_input_is_refused() -> None:
    assert "empty" in str(expect_input_error(b""))


def test_formats_outside_the_list_are_refused_even_if_pillow_reads_them() -> None:
    ppm = b"P6\n2 2\n255\n" + bytes([255, 0, 0]) * 4
    assert Image.open(io.BytesIO(ppm)).format == "PPM"  # Pillow itself would decode it
    assert str(expect_input_error(ppm)) == NOT_DECODABLE


# --------------------------------------------------------------------------------------------
# Decompression bombs


def test_pixel_bomb_fails_fast_from_the_header() -> None:
    bomb = bilevel_png(20000, 20000)  # 400 megapixels
    assert len(bomb) < 100_000
    start = time.monotonic()
    err = expect_input_error(bomb)
    assert time.monotonic() - start < 2.0  # decoding would take far longer, and GBs
    assert str(err).startswith(f"{FIELD}: ") and "pixel" in str(err)


def test_our_limit_applies_below_pillows() -> None:
    # 64 MP is under Pillow's own bomb threshold (~89 MP) but over the configured 40 MP.
    bomb = bilevel_png(8000, 8000)
    start = time.monotonic()
    err = expect_input_error(bomb)
    assert time.monotonic() - start < 2.0  # decoding would take far longer, and GBs
    assert str(err) == f"{FIELD}: image is 8000x8000 = 64,000,000 pixels, more than the 40,000,000 pixel limit"


def test_limit_is_the_callers() -> None:
    small = bilevel_png(1100, 1000)
    assert decode(small, max_pixels=1_100_000).size == (1100, 1000)
    assert "more than the 1,000,000 pixel limit" in str(expect_input_error(small, max_pixels=1_000_000))


def test_gif_with_huge_logical_screen_is_refused() -> None:
    img = Image.new("P", (4, 4), 0)
    data = bytearray(encode_with_pillow(img, "GIF"))
    data[6:10] = (30000).to_bytes(2, "little") + (30000).to_bytes(2, "little")  # logical screen size
    err = expect_input_error(bytes(data))
    assert "pixel" in str(err) or str(err) == NOT_DECODABLE


# --------------------------------------------------------------------------------------------
# Masks


def test_mask_is_single_channel() -> None:
    mask = decode_mask(encode_with_pillow(Image.new("L", (8, 8), 200), "PNG"), field="mask", max_pixels=LIMIT)
    assert mask.mode == "L" and mask.getpixel((3, 3)) == 200


def test_mask_transparency_reads_as_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (4, 0, 8, 8))
    mask = decode_mask(encode_with_pillow(rgba, "PNG"), field="mask", max_pixels=LIMIT)
    assert mask.mode == "L"
    assert mask.getpixel((1, 1)) == 0 and mask.getpixel((6, 1)) == 255


def test_mask_errors_name_the_field() -> None:
    with pytest.raises(InputError) as info:
        decode_mask(b"nope", field="mask", max_pixels=LIMIT)
    assert info.value.field == "mask"


# --------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize(
    "fmt,pil_format,content_type,extension",
    [
        ("jpeg", "JPEG", "image/jpeg", "jpg"),
        ("jpg", "JPEG", "image/jpeg", "jpg"),
        ("JPEG", "JPEG", "image/jpeg", "jpg"),
        ("png", "PNG", "image/png", "png"),
        ("webp", "WEBP", "image/webp", "webp"),
        ("avif", "AVIF", "image/avif", "avif"),
    ],
)
def test_encode_round_trips(fmt: str, pil_format: str, content_type: str, extension: str) -> None:
    src = quadrant_image((96, 64))
    encoded = encode_image(src, fmt)
    assert isinstance(encoded, EncodedImage)
    assert (encoded.content_type, encoded.extension) == (content_type, extension)
    reopened = Image.open(io.BytesIO(encoded.data))
    assert reopened.format == pil_format and reopened.size == (96, 64)
    back = decode(encoded.data)
    assert mean_abs_error(src, back) < 3
    if pil_format == "PNG":
        assert back.tobytes() == src.tobytes()


def test_output_formats_table() -> None:
    assert set(OUTPUT_FORMATS) == {"jpeg", "jpg", "png", "webp", "avif"}
    assert {f.content_type for f in OUTPUT_FORMATS.values()} == {"image/jpeg", "image/png", "image/webp", "image/avif"}
    assert OUTPUT_FORMATS["jpg"] is OUTPUT_FORMATS["jpeg"]


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_quality_trades_size_for_fidelity(fmt: str) -> None:
    src = photo_like()
    low, high = encode_image(src, fmt, quality=15), encode_image(src, fmt, quality=95)
    assert len(low.data) < 0.6 * len(high.data)
    assert mean_abs_error(src, decode(low.data)) > mean_abs_error(src, decode(high.data))


def test_default_quality_is_90_for_jpeg_and_webp() -> None:
    src = photo_like()
    for fmt in ("jpeg", "webp"):
        assert encode_image(src, fmt).data == encode_image(src, fmt, quality=90).data
        assert encode_image(src, fmt).data != encode_image(src, fmt, quality=50).data


def test_png_ignores_quality() -> None:
    src = photo_like()
    assert encode_image(src, "png", quality=5).data == encode_image(src, "png", quality=100).data


def test_metadata_is_stripped() -> None:
    from PIL import ImageCms

    src = quadrant_image()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0112] = 6
    src.info["exif"] = exif.tobytes()
    src.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src.info["xmp"] = b"<x:xmpmeta>secret</x:xmpmeta>"
    src.info["comment"] = b"secret"
    for fmt in ("jpeg", "png", "webp", "avif"):
        data = encode_image(src, fmt).data
        assert b"SecretCam" not in data and b"secret" not in data, fmt
        reopened = Image.open(io.BytesIO(data))
        assert not reopened.info.get("exif") and not reopened.info.get("icc_profile"), fmt
        assert dict(reopened.getexif()) == {}, fmt
    assert src.info["comment"] == b"secret"  # the caller's image is left alone


def test_alpha_handling_per_format() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    jpeg = Image.open(io.BytesIO(encode_image(rgba, "jpeg").data))
    assert jpeg.mode == "RGB" and close(jpeg.getpixel((4, 4)), (255, 255, 255), 2)  # on white
    png = Image.open(io.BytesIO(encode_image(rgba, "png").data))
    assert png.mode == "RGBA" and png.getpixel((4, 4)) == (0, 0, 0, 0)
    webp = Image.open(io.BytesIO(encode_image(rgba, "webp").data))
    assert webp.mode == "RGBA"


def test_other_modes_are_encodable() -> None:
    for mode in ("L", "P", "CMYK", "I;16", "1", "LA"):
        img = Image.new(mode, (8, 8))
        for fmt in ("jpeg", "png", "webp", "avif"):
            Image.open(io.BytesIO(encode_image(img, fmt).data)).load()


def test_encode_refuses_bad_arguments() -> None:
    img = quadrant_image()
    with pytest.raises(ValueError, match="unknown output format 'gif'"):
        encode_image(img, "gif")
    for q in (-1, 101):
        with pytest.raises(ValueError, match="quality"):
            encode_image(img, "jpeg", quality=q)
    encode_image(img, "jpeg", quality=0)
    encode_image(img, "jpeg", quality=100)
