"""The nudenet scorer (optional extra): the package's real ONNX detector on a real photo, the
reduction to one score per image, and a one-line error without the extra. CI installs the
extra (the dev extra includes it); without it the real-detector tests skip here and fail in CI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import winnow.scoring.nudenet as nudenet_scorer
from tests.ci import unavailable
from winnow.models.errors import WinnowError
from winnow.pipeline.config import ConfigError, load_config
from winnow.scoring.base import REGISTRY, Candidates
from winnow.scoring.nudenet import NudeNetMissingError, NudeNetScorer
from winnow.scoring.select import Policy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA; public domain): (512, 512, 3) RGB uint8."""
    try:
        import nudenet  # noqa: F401
        from skimage import data
    except ImportError as err:
        unavailable(f"{err.name} is not installed (pip install -e '.[dev]' installs the nudenet extra)")
    return data.astronaut()


def test_a_real_photo_shows_a_face_and_no_exposed_part(astronaut: np.ndarray, tmp_path: Path) -> None:
    from nudenet import NudeDetector

    assert REGISTRY["nudenet"] is NudeNetScorer
    scorer = NudeNetScorer(NudeNetScorer.Params(), CPU)
    scorer.setup()
    images = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float() / 255
    (found,) = scorer.detections(images)
    faces = [d for d in found if d["class"].startswith("FACE_")]
    assert faces and max(d["score"] for d in faces) > 0.5
    score = scorer.score(Candidates(images=images, prompts=["an astronaut"]))
    assert score.dtype == torch.float32 and score.shape == (1,)
    assert 0.0 <= float(score[0]) < 0.2
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")  # the package's own path: a file
    assert found == NudeDetector().detect(str(tmp_path / "astronaut.png"))


class FakeDetector:
    """Stands in for ``NudeDetector``: fixed detections per image."""

    def __init__(self, found: list[list[dict]]) -> None:
        self.found = found

    def detect_batch(self, images: list[np.ndarray], batch_size: int) -> list[list[dict]]:
        assert all(i.dtype == np.uint8 and i.shape[-1] == 3 for i in images) and batch_size == len(images)
        return self.found


def test_the_score_is_the_most_confident_detection_of_the_configured_classes(monkeypatch) -> None:
    found = [
        [{"class": "FACE_FEMALE", "score": 0.9}, {"class": "BELLY_EXPOSED", "score": 0.7}],
        [{"class": "BUTTOCKS_EXPOSED", "score": 0.4}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6}],
        [],
    ]
    monkeypatch.setattr(nudenet_scorer, "_DETECTOR", FakeDetector(found))
    batch = Candidates(images=torch.rand(3, 3, 8, 8), prompts=["a", "b", "c"])
    explicit = NudeNetScorer(NudeNetScorer.Params(), CPU).score(batch)
    assert explicit.tolist() == pytest.approx([0.0, 0.6, 0.0])  # a belly is not explicit by default
    belly = NudeNetScorer(NudeNetScorer.Params(classes=["BELLY_EXPOSED"]), CPU).score(batch)
    assert belly.tolist() == pytest.approx([0.7, 0.0, 0.0])
    assert Policy().weight("nudenet") == 0  # higher is worse: a ceiling, not a ranking


def test_unknown_classes_are_config_errors(make_config) -> None:
    import yaml

    path = make_config()
    data = yaml.safe_load(path.read_text())
    data["scorers"]["nudenet"] = {"classes": ["FACE_FEMALE"]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"scorers\.nudenet\.classes\.0"):
        load_config(path)


def test_without_the_extra_the_scorer_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet raises ImportError
    monkeypatch.setattr(nudenet_scorer, "_DETECTOR", None)
    with pytest.raises(NudeNetMissingError, match=r"pip install -e '\.\[nudenet\]'.*AGPL-3\.0") as err:
        NudeNetScorer(NudeNetScorer.Params(), CPU).setup()
    assert isinstance(err.value, WinnowError) and "\n" not in str(err.value)
