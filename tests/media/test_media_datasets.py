"""Training datasets: images decoded straight to the training size, budgets checked from the
headers before any decoding, and a zip's faults reported as the request's."""

from __future__ import annotations

import pytest
from harness import zip_of
from PIL import Image

from imagegate.exceptions import InputError
from imagegate.media.datasets import DatasetLimits, read_dataset

from .support import bilevel_png, encode_with_pillow, quadrant_image

FIELD = "image_data_url"
AREA = 64 * 64
LIMITS = DatasetLimits(max_member_bytes=4 * 1024 * 1024, max_image_pixels=50_000_000, max_total_pixels=60_000_000, fit_area=AREA)


def expect(data: bytes, words: str, limits: DatasetLimits = LIMITS, min_images: int = 1) -> InputError:
    with pytest.raises(InputError) as info:
        read_dataset(data, field=FIELD, limits=limits, min_images=min_images)
    assert info.value.field == FIELD
    assert words in info.value.reason, info.value.reason
    return info.value


def test_images_are_scaled_to_the_training_area_keeping_their_aspect() -> None:
    photo = encode_with_pillow(quadrant_image((640, 480)), "JPEG", quality=95)
    drawing = encode_with_pillow(quadrant_image((300, 900)), "PNG")
    small = encode_with_pillow(quadrant_image((40, 30)), "PNG")
    images = read_dataset(
        zip_of({"a.jpg": photo, "b.png": drawing, "c.png": small, "notes.txt": b"ignored", "__MACOSX/._a.jpg": b"x"}),
        field=FIELD, limits=LIMITS, min_images=3,
    )
    assert [im.mode for im in images] == ["RGB"] * 3
    (w0, h0), (w1, h1), (w2, h2) = (im.size for im in images)
    assert w0 * h0 <= AREA and abs(w0 / h0 - 640 / 480) < 0.05 and w0 * h0 > AREA * 0.9
    assert w1 * h1 <= AREA and abs(w1 / h1 - 300 / 900) < 0.05
    assert (w2, h2) == (40, 30)  # never scaled up
    # The quadrants' colours survive the reduction.
    assert images[0].getpixel((2, 2))[0] > 200 and images[0].getpixel((w0 - 3, h0 - 3))[2] < 100


def test_a_single_image_dataset_is_fitted_too() -> None:
    (image,) = read_dataset(encode_with_pillow(quadrant_image((512, 512)), "PNG"), field=FIELD, limits=LIMITS, min_images=1)
    assert image.size == (64, 64)


def test_exif_orientation_survives_the_reduction() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode_with_pillow(quadrant_image((400, 200)), "JPEG", quality=95, exif=exif.tobytes())
    (image,) = read_dataset(data, field=FIELD, limits=LIMITS, min_images=1)
    assert image.height > image.width


def test_a_bilevel_bomb_is_decoded_to_a_small_image() -> None:
    (image,) = read_dataset(zip_of({"bomb.png": bilevel_png(6000, 6000)}), field=FIELD, limits=LIMITS, min_images=1)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_the_total_pixel_budget_is_checked_from_the_headers_before_decoding() -> None:
    # Three 5000x5000 pictures claim 75 MP against a 60 MP budget. The third one's pixel data is
    # garbage: had anything been decoded, the error would be about decoding.
    good = bilevel_png(5000, 5000)
    broken = good[: len(good) // 2] + b"\0" * 64
    error = expect(zip_of({"1.png": good, "2.png": good, "3.png": broken}), "pixel limit for a dataset")
    assert "75,000,000" in error.reason


def test_one_image_over_the_pixel_limit_is_named() -> None:
    limits = DatasetLimits(4 * 1024 * 1024, max_image_pixels=1_000_000, max_total_pixels=60_000_000, fit_area=AREA)
    expect(zip_of({"ok.png": bilevel_png(10, 10), "big.png": bilevel_png(2000, 2000)}), "big.png: image is 2000x2000", limits)


def test_too_few_images_and_members_that_are_not_images() -> None:
    expect(zip_of({"a.png": bilevel_png(80, 80)}), "needs at least 10 PNG/JPG images, found 1", min_images=10)
    expect(zip_of({"a.png": b"<html>not an image</html>"}), "a.png: is not a decodable image")
    expect(b"PK\x03\x04 truncated", "is not a readable zip archive")


def test_only_the_first_images_are_used() -> None:
    files = {f"{i:03}.png": bilevel_png(16, 16) for i in range(5)}
    limits = DatasetLimits(4 * 1024 * 1024, 50_000_000, 60_000_000, AREA, max_images=3)
    assert len(read_dataset(zip_of(files), field=FIELD, limits=limits, min_images=1)) == 3


def test_a_member_over_the_size_limit_is_refused_by_its_declared_size() -> None:
    limits = DatasetLimits(max_member_bytes=1000, max_image_pixels=50_000_000, max_total_pixels=60_000_000, fit_area=AREA)
    expect(zip_of({"noise.png": encode_with_pillow(Image.effect_noise((64, 64), 50), "PNG")}), "noise.png is larger than the input size limit (1000 bytes)", limits)


def test_an_image_too_narrow_at_the_training_size_is_refused_naming_it() -> None:
    limits = DatasetLimits(4 * 1024 * 1024, 50_000_000, 60_000_000, fit_area=512 * 512, min_side=64)
    stripe = encode_with_pillow(quadrant_image((8000, 70)), "PNG")
    expect(zip_of({"ok.png": bilevel_png(600, 600), "stripe.png": stripe}), "stripe.png: is 5473x47 at the training size", limits)
    expect(encode_with_pillow(quadrant_image((40, 40)), "PNG"), "is 40x40 at the training size; both sides must be at least 64 px", limits)
