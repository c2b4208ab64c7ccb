"""NudeNet: a YOLO-style detector of exposed and covered body parts (the ``nudenet`` package's
ONNX model, ``320n.onnx``, shipped inside its wheel, run offline by onnxruntime on the CPU).

An optional extra, never a default dependency: ``pip install -e '.[nudenet]'``. The wheel's
metadata says MIT, but the LICENSE file it bundles is the AGPL-3.0 (docs/scoring.md). This
module imports without the extra; using the scorer without it is a one-line error.

Each image goes through the package's own ``detect_batch`` (pad to a square, resize to
320×320, detections above 0.2 confidence, non-maximum suppression) as the BGR uint8 array
``cv2.imread`` would give for the image's PNG, so scores equal ``NudeDetector().detect(file)``.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import torch
from pydantic import Field

from winnow.models.errors import WinnowError
from winnow.models.generator import to_uint8
from winnow.scoring.base import Candidates, Scorer, ScorerParams, register

Exposed = Literal[
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "BELLY_EXPOSED",
    "ARMPITS_EXPOSED",
    "FEET_EXPOSED",
]
EXPLICIT: tuple[Exposed, ...] = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
INSTALL = "pip install -e '.[nudenet]' (its bundled LICENSE is the AGPL-3.0: see docs/scoring.md)"


class NudeNetMissingError(WinnowError):
    """The ``nudenet`` scorer without its optional extra installed."""


_DETECTOR: Any = None
_LOCK = threading.Lock()


def detector() -> Any:
    """The package's ``NudeDetector``, created once per process (thread-safe)."""
    global _DETECTOR
    with _LOCK:
        if _DETECTOR is None:
            try:
                from nudenet import NudeDetector
            except ImportError as err:
                raise NudeNetMissingError(
                    f"the nudenet scorer needs the optional nudenet extra ({err.name or err} is not "
                    f"installed): {INSTALL}"
                ) from None
            _DETECTOR = NudeDetector()
        return _DETECTOR


class NudeNetParams(ScorerParams):
    """The nudenet scorer's settings."""

    classes: tuple[Exposed, ...] = Field(
        EXPLICIT,
        min_length=1,
        description="the detector's classes that count (default: the explicit ones; the others, "
        "MALE_BREAST/BELLY/ARMPITS/FEET_EXPOSED, are common in ordinary photos)",
    )


@register
class NudeNetScorer(Scorer):
    """NudeNet (optional extra): the highest confidence of a detected exposed body part of the
    configured classes, in [0, 1], higher is worse; 0 when none is detected (the detector
    reports nothing under 0.2). Gate with a ceiling (`select.ceilings: {nudenet: 0.5}`); it ranks
    nothing unless `select.weights` gives it a weight. Runs on the CPU. The prompt is ignored."""

    name = "nudenet"
    Params = NudeNetParams
    params: NudeNetParams
    default_weight = 0.0  # higher is worse: a ceiling gates on it, it ranks nothing unless weighted

    def setup(self) -> None:
        """Create the detector; a one-line error with the install command without the extra."""
        detector()

    def detections(self, images: torch.Tensor) -> list[list[dict[str, Any]]]:
        """The package's detections per image of ``images`` ((n, 3, H, W) in [0, 1])."""
        bgr = [pixels[..., ::-1].copy() for pixels in to_uint8(images).numpy()]  # as cv2.imread reads
        return detector().detect_batch(bgr, batch_size=max(len(bgr), 1))

    def score(self, batch: Candidates) -> torch.Tensor:
        """(n,) float32 CPU scores."""
        wanted = set(self.params.classes)
        found = self.detections(batch.images)
        best = [max((d["score"] for d in mine if d["class"] in wanted), default=0.0) for mine in found]
        return torch.tensor(best, dtype=torch.float32)
