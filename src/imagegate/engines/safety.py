"""The output safety checker: NudeNet's detector plus a tolerance policy.

NudeNet's 320n detector (an ONNX YOLO model that ships inside the ``nudenet`` wheel, so it works
offline) finds body parts as labelled boxes with scores. Whether an image is unsafe is a policy
over those detections, which the endpoints express as a ``safety_tolerance`` number on different
scales. Every scale is first normalised to one *strictness* in ``[0, 1]`` (1 = strictest,
0 = most permissive), and one table maps strictness to a policy:

* **unsafe labels** grow in tiers (:data:`LABEL_TIERS`): a label is unsafe at every strictness at
  or above its tier's threshold, so stricter levels always flag a superset of labels;
* **minimum score** falls linearly from :data:`PERMISSIVE_MIN_SCORE` (strictness 0) to
  :data:`STRICT_MIN_SCORE` (strictness 1), so stricter levels also trust weaker detections.

==========  ===================================================  ==========
strictness  unsafe labels (cumulative)                           min score
==========  ===================================================  ==========
0.0 - 0.3   FEMALE_GENITALIA_EXPOSED, MALE_GENITALIA_EXPOSED,    0.75 - 0.63
            ANUS_EXPOSED
0.3 - 0.7   + FEMALE_BREAST_EXPOSED, BUTTOCKS_EXPOSED             0.63 - 0.47
0.7 - 0.9   + FEMALE_GENITALIA_COVERED, ANUS_COVERED              0.47 - 0.39
            (underwear / see-through crotch shots)
0.9 - 1.0   + FEMALE_BREAST_COVERED, BUTTOCKS_COVERED             0.39 - 0.35
            (swimwear, lingerie)
==========  ===================================================  ==========

Faces, feet, armpits, bellies and male chests are never unsafe on their own.

Scales (``tolerance`` → strictness = (most permissive − tolerance) / (most permissive − strictest)):

=========  ===========================  ================================================
scale      endpoints                    levels → strictness
=========  ===========================  ================================================
``1-6``    flux-pro-1-1                 1→1.0, 2→0.8, 3→0.6, 4→0.4, 5→0.2, 6→0.0
``1-4``    flux-2-pro text-to-image     1→1.0, 2→0.67, 3→0.33, 4→0.0
``1-3``    flux-2-pro image-to-image    1→1.0, 2→0.5, 3→0.0
``0-2``    flux-kontext-restore         0→1.0, 1→0.5, 2→0.0
default    requests without a number    :data:`DEFAULT_STRICTNESS` (0.5)
=========  ===========================  ================================================
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from imagegate.exceptions import EngineError

# (strictness at which the labels become unsafe, labels). Cumulative.
LABEL_TIERS: tuple[tuple[float, frozenset[str]], ...] = (
    (0.0, frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"})),
    (0.3, frozenset({"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"})),
    (0.7, frozenset({"FEMALE_GENITALIA_COVERED", "ANUS_COVERED"})),
    (0.9, frozenset({"FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED"})),
)
# The permissive end only trusts confident detections: the 320n model reports body parts at 0.2+
# and misfires at ~0.3 on ordinary photos (a cup of coffee read as BUTTOCKS_EXPOSED 0.30 when its
# colours were swapped), so even the strictest level stays above that noise floor.
PERMISSIVE_MIN_SCORE = 0.75
STRICT_MIN_SCORE = 0.35
DEFAULT_STRICTNESS = 0.5

# scale name -> (strictest level, most permissive level)
TOLERANCE_SCALES: dict[str, tuple[int, int]] = {
    "1-6": (1, 6),
    "1-4": (1, 4),
    "1-3": (1, 3),
    "0-2": (0, 2),
}
DEFAULT_SCALE = "default"

# The detector sees a 320x320 letterbox; shrinking huge outputs with a box filter first is both
# faster and less aliased than letting OpenCV's bilinear resize jump from 8 MP to 0.1 MP.
DETECT_MAX_SIDE = 640
BATCH_SIZE = 4


@dataclass(frozen=True)
class SafetyPolicy:
    strictness: float
    unsafe_labels: frozenset[str]
    min_score: float


@dataclass(frozen=True)
class SafetyVerdict:
    flagged: bool
    # The detections that made the image unsafe, highest score first; empty when not flagged.
    labels: list[tuple[str, float]] = field(default_factory=list)
    # Everything the detector reported (faces included), for logs and audits.
    detections: list[tuple[str, float]] = field(default_factory=list)
    strictness: float = DEFAULT_STRICTNESS


def strictness_for(tolerance: int | str | None, scale: str | None = DEFAULT_SCALE) -> float:
    """Normalise ``tolerance`` on ``scale`` to a strictness in [0, 1]; ``None`` gives the default.

    Raises ``ValueError`` for unknown scales, non-integer tolerances and out-of-range levels.
    """
    if tolerance is None or (isinstance(tolerance, str) and not tolerance.strip()):
        return DEFAULT_STRICTNESS
    scale = scale or DEFAULT_SCALE
    if scale == DEFAULT_SCALE:
        raise ValueError(f"safety tolerance {tolerance!r} given without a tolerance scale")
    if scale not in TOLERANCE_SCALES:
        raise ValueError(f"unknown tolerance scale {scale!r}; known: {', '.join(TOLERANCE_SCALES)}")
    if isinstance(tolerance, bool):
        raise ValueError(f"safety tolerance must be an integer, got {tolerance!r}")
    try:
        level = int(str(tolerance).strip()) if isinstance(tolerance, str) else int(tolerance)
    except ValueError as exc:
        raise ValueError(f"safety tolerance must be an integer, got {tolerance!r}") from exc
    if isinstance(tolerance, float) and tolerance != level:
        raise ValueError(f"safety tolerance must be an integer, got {tolerance!r}")
    strictest, permissive = TOLERANCE_SCALES[scale]
    if not strictest <= level <= permissive:
        raise ValueError(f"safety tolerance on scale {scale} must be {strictest}..{permissive}, got {level}")
    return (permissive - level) / (permissive - strictest)


def policy_for_strictness(strictness: float) -> SafetyPolicy:
    if not 0.0 <= strictness <= 1.0:
        raise ValueError(f"strictness must be within [0, 1], got {strictness}")
    labels: frozenset[str] = frozenset()
    for threshold, tier in LABEL_TIERS:
        # A hair of slack so 2/3 and similar levels are not pushed below a tier by rounding.
        if strictness + 1e-9 >= threshold:
            labels |= tier
    min_score = PERMISSIVE_MIN_SCORE + (STRICT_MIN_SCORE - PERMISSIVE_MIN_SCORE) * strictness
    return SafetyPolicy(strictness, labels, round(min_score, 4))


def policy(tolerance: int | str | None, scale: str | None = DEFAULT_SCALE) -> SafetyPolicy:
    return policy_for_strictness(strictness_for(tolerance, scale))


def judge(detections: Iterable[tuple[str, float]], rule: SafetyPolicy) -> SafetyVerdict:
    """The verdict of ``rule`` on already-made detections ``(label, score)``."""
    seen = sorted(((str(label), float(score)) for label, score in detections), key=lambda d: -d[1])
    unsafe = [(label, score) for label, score in seen if label in rule.unsafe_labels and score >= rule.min_score]
    return SafetyVerdict(flagged=bool(unsafe), labels=unsafe, detections=seen, strictness=rule.strictness)


class SafetyChecker:
    """NudeNet's detector behind a lock-free, lazily loaded session.

    onnxruntime's ``InferenceSession.run`` is safe to call from several threads at once, so only
    the first load is serialised.
    """

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path
        self._detector: Any = None
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._detector is not None

    def load(self) -> Any:
        detector = self._detector
        if detector is not None:
            return detector
        with self._load_lock:
            if self._detector is None:
                try:
                    from nudenet import NudeDetector

                    self._detector = NudeDetector(model_path=self.model_path)
                except Exception as exc:  # ImportError, a missing/corrupt model, onnxruntime errors
                    raise EngineError(f"safety checker: cannot load NudeNet: {exc}") from exc
            return self._detector

    def detect(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        """Raw NudeNet detections ``(label, score)`` per image."""
        if not images:
            return []
        detector = self.load()
        # NudeNet's own path reader hands the model OpenCV's BGR order; arrays must match it.
        arrays = [_to_bgr(image) for image in images]
        try:
            results = detector.detect_batch(arrays, batch_size=BATCH_SIZE)
        except Exception as exc:
            raise EngineError(f"safety checker: NudeNet failed: {exc}") from exc
        return [[(d["class"], float(d["score"])) for d in found] for found in results]

    def check(
        self,
        images: list[Image.Image],
        tolerance: int | str | None = None,
        scale: str | None = DEFAULT_SCALE,
    ) -> list[SafetyVerdict]:
        """One verdict per image under ``tolerance`` on ``scale`` (see the module tables)."""
        try:
            rule = policy(tolerance, scale)
        except ValueError as exc:
            # The API validates tolerances; one reaching here is a catalog or worker bug.
            raise EngineError(f"safety checker: {exc}") from exc
        return [judge(found, rule) for found in self.detect(images)]

    @staticmethod
    def redact(image: Image.Image) -> Image.Image:
        """A black image of the same size (what hosted APIs return for a flagged output)."""
        return Image.new("RGB", image.size, (0, 0, 0))


def _to_bgr(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white like a viewer would, instead of exposing colours hidden under alpha.
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > DETECT_MAX_SIDE:
        image = image.copy()
        image.thumbnail((DETECT_MAX_SIDE, DETECT_MAX_SIDE), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
