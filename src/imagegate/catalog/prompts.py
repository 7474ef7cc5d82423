"""Prompt rewrites with a documented, testable effect.

``sanitize`` is the moderation-friendly rewrite the seeds describe for ``/generateT2I`` and the
schnell batch endpoint: phrases that trip content filters for no good reason are replaced with
neutral equivalents, whole-word and case-insensitively, in table order.

``enhance`` implements ``enhance_prompt`` (FLUX1.1 [pro]): a short prompt gets the quality and
photography descriptors that FLUX responds to; ``raw`` asks for the opposite (no enhancement, lower
guidance — see the flux1 catalog module).
"""

from __future__ import annotations

import re

SANITIZE_RULES: tuple[tuple[str, str], ...] = (
    ("fingers brushing lips", "hand near face"),
    ("finger on lips", "hand near face"),
    ("biting lip", "thoughtful expression"),
    ("bedroom eyes", "relaxed gaze"),
    ("wet clothes", "rain-soaked jacket"),
    ("lingerie", "evening wear"),
    ("bikini", "swimwear"),
    ("topless", "shirtless"),
    ("seductive", "confident"),
    ("sensual", "elegant"),
    ("blood", "red paint"),
    ("gore", "dramatic scene"),
    ("corpse", "still figure"),
    ("gun", "prop"),
    ("kill", "defeat"),
)

_COMPILED = tuple((re.compile(rf"\b{re.escape(src)}\b", re.IGNORECASE), dst) for src, dst in SANITIZE_RULES)

ENHANCE_SUFFIX = "highly detailed, sharp focus, professional photography, natural lighting, rich colour, 8k"


def sanitize(prompt: str) -> str:
    for pattern, replacement in _COMPILED:
        prompt = pattern.sub(replacement, prompt)
    return prompt


def enhance(prompt: str) -> str:
    text = prompt.strip().rstrip(".")
    return f"{text}, {ENHANCE_SUFFIX}"
