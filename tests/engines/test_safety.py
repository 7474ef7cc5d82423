"""NudeNet safety checker: the real 320n detector from the nudenet wheel, on a real photograph."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegate.engines.safety import (
    DEFAULT_STRICTNESS,
    LABEL_TIERS,
    TOLERANCE_SCALES,
    SafetyChecker,
    judge,
    policy,
    policy_for_strictness,
    strictness_for,
)
from imagegate.exceptions import EngineError

PHOTO = Path(__file__).resolve().parents[1] / "data" / "astronaut_224.png"
ALL_LABELS = sorted(set().union(*(labels for _, labels in LABEL_TIERS)) | {
    "FACE_FEMALE", "FACE_MALE", "FEET_EXPOSED", "FEET_COVERED", "ARMPITS_EXPOSED", "ARMPITS_COVERED",
    "BELLY_EXPOSED", "BELLY_COVERED", "MALE_BREAST_EXPOSED",
})


@pytest.fixture(scope="module")
def checker() -> SafetyChecker:
    return SafetyChecker()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


def _levels(scale: str) -> list[int]:
    """The scale's levels from most permissive to strictest."""
    strictest, permissive = TOLERANCE_SCALES[scale]
    return list(range(permissive, strictest - 1, -1))


# --------------------------------------------------------------------------- the real detector


def test_clothed_person_is_not_flagged(checker: SafetyChecker, photo: Image.Image) -> None:
    (verdict,) = checker.check([photo], None, "default")
    print(f"\nastronaut detections: {verdict.detections}")
    # The detector did see the photo (a face), and nothing in it is unsafe.
    assert any(label == "FACE_FEMALE" and score > 0.5 for label, score in verdict.detections)
    assert not verdict.flagged and verdict.labels == []
    assert verdict.strictness == DEFAULT_STRICTNESS
    # Not at the strictest level of any scale either.
    for scale in TOLERANCE_SCALES:
        (strict,) = checker.check([photo], _levels(scale)[-1], scale)
        assert not strict.flagged, (scale, strict)


def test_large_and_non_rgb_images_are_checked(checker: SafetyChecker, photo: Image.Image) -> None:
    big = photo.resize((2400, 2400), Image.Resampling.BICUBIC)  # shrunk before detection
    rgba = photo.convert("RGBA")
    grey = photo.convert("L")
    verdicts = checker.check([big, rgba, grey], 2, "1-6")
    assert len(verdicts) == 3
    for verdict in verdicts:
        assert not verdict.flagged
        assert any(label in ("FACE_FEMALE", "FACE_MALE") for label, _ in verdict.detections)


def test_latency_per_image(checker: SafetyChecker, photo: Image.Image) -> None:
    checker.check([photo])  # the first call loads the session
    one = []
    for _ in range(10):
        start = time.perf_counter()
        checker.check([photo])
        one.append(time.perf_counter() - start)
    batch = [photo.resize((1024, 768)), photo, photo.resize((512, 512)), photo.rotate(90)]
    start = time.perf_counter()
    checker.check(batch)
    per_image_batched = (time.perf_counter() - start) / len(batch)
    print(f"\nNudeNet 320n on CPU: median {statistics.median(one) * 1000:.1f} ms per image alone, "
          f"{per_image_batched * 1000:.1f} ms per image in a batch of {len(batch)}")
    assert statistics.median(one) < 1.0 and per_image_batched < 1.0


def test_session_loads_once_and_is_shared_across_threads(photo: Image.Image) -> None:
    fresh = SafetyChecker()
    assert not fresh.loaded
    results: list[list] = []
    sessions: list[object] = []
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(fresh.check([photo], 3, "1-6"))
            sessions.append(fresh.load())
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({id(session) for session in sessions}) == 1
    first = results[0][0]
    for result in results[1:]:
        assert [(label, round(score, 5)) for label, score in result[0].detections] == [
            (label, round(score, 5)) for label, score in first.detections
        ]


def test_redact_is_black_and_same_size(photo: Image.Image) -> None:
    for image in (photo, photo.convert("RGBA").resize((37, 91))):
        black = SafetyChecker.redact(image)
        assert black.size == image.size
        assert np.asarray(black).max() == 0


def test_empty_list(checker: SafetyChecker) -> None:
    assert checker.check([], 2, "1-6") == []


# --------------------------------------------------------------------------- the policy table


def test_scales_normalise_to_strictness() -> None:
    assert [strictness_for(level, "1-6") for level in range(1, 7)] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert [strictness_for(level, "0-2") for level in range(3)] == [1.0, 0.5, 0.0]
    assert [strictness_for(level, "1-3") for level in range(1, 4)] == [1.0, 0.5, 0.0]
    assert strictness_for(2, "1-4") == pytest.approx(2 / 3)
    assert strictness_for("2", "1-6") == strictness_for(2, "1-6")  # flux-pro sends strings
    assert strictness_for(None, "1-6") == strictness_for(None, "default") == DEFAULT_STRICTNESS
    for bad in [(7, "1-6"), (0, "1-6"), (3, "0-2"), ("two", "1-3"), (2.5, "1-4"), (2, "1-9"), (2, "default")]:
        with pytest.raises(ValueError):
            strictness_for(*bad)


def test_check_rejects_bad_tolerances_as_engine_errors(checker: SafetyChecker, photo: Image.Image) -> None:
    with pytest.raises(EngineError, match="1..6"):
        checker.check([photo], 9, "1-6")


def test_table_is_monotonic_in_every_scale() -> None:
    for scale in TOLERANCE_SCALES:
        rules = [policy(level, scale) for level in _levels(scale)]
        for looser, stricter in itertools.pairwise(rules):
            assert stricter.strictness > looser.strictness
            assert stricter.unsafe_labels >= looser.unsafe_labels
            assert stricter.min_score <= looser.min_score
    # ... and in what it flags: any detection a looser level flags, every stricter level flags.
    scores = [0.2, 0.36, 0.45, 0.55, 0.65, 0.74, 0.76, 0.95]
    grid = [[(label, score)] for label, score in itertools.product(ALL_LABELS, scores)]
    strictness = [i / 20 for i in range(21)]
    for detections in grid:
        flags = [judge(detections, policy_for_strictness(s)).flagged for s in strictness]
        assert flags == sorted(flags), (detections, flags)  # False... then True...


def test_table_ends() -> None:
    loosest, strictest = policy(6, "1-6"), policy(1, "1-6")
    assert loosest.unsafe_labels == {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"}
    assert loosest.min_score == 0.75
    assert judge([("MALE_GENITALIA_EXPOSED", 0.8)], loosest).flagged
    assert not judge([("MALE_GENITALIA_EXPOSED", 0.7)], loosest).flagged
    assert not judge([("FEMALE_BREAST_EXPOSED", 0.99)], loosest).flagged
    assert judge([("FEMALE_BREAST_EXPOSED", 0.7)], policy(None, "default")).flagged
    assert not judge([("FEMALE_BREAST_COVERED", 0.9)], policy(None, "default")).flagged
    assert judge([("FEMALE_BREAST_COVERED", 0.5), ("BUTTOCKS_COVERED", 0.4)], strictest).flagged
    assert strictest.min_score == 0.35
    # Faces, feet, bellies and bare male chests are never unsafe on their own.
    for label in ("FACE_FEMALE", "FEET_EXPOSED", "BELLY_EXPOSED", "MALE_BREAST_EXPOSED", "ARMPITS_EXPOSED"):
        assert not judge([(label, 0.99)], strictest).flagged


def test_verdict_lists_what_flagged_it_highest_first() -> None:
    verdict = judge(
        [("FACE_FEMALE", 0.9), ("BUTTOCKS_EXPOSED", 0.7), ("FEMALE_BREAST_EXPOSED", 0.8), ("ANUS_EXPOSED", 0.3)],
        policy(3, "1-6"),
    )
    assert verdict.flagged
    assert verdict.labels == [("FEMALE_BREAST_EXPOSED", 0.8), ("BUTTOCKS_EXPOSED", 0.7)]
    assert next(label for label, _ in verdict.detections) == "FACE_FEMALE" and len(verdict.detections) == 4
