"""HPS v2.1 scorer: a tiny open_clip CLIP saved in the published checkpoint's layout, parity
with the authors' img_score.py computation, strict and safe loading, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.pickle_payload import Payload
from winnow.models.errors import ModelNotFoundError
from winnow.pipeline.config import Scoring
from winnow.scoring.base import Candidates
from winnow.scoring.hpsv2 import PUBLISHED, CheckpointFormatError, HpsV2Params, HpsV2Scorer, clear_cache
from winnow.scoring.testing import build_tiny_hpsv2

CPU = torch.device("cpu")
PROMPTS = ["a red circle", "a blue square on a black background", "a red circle"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_hpsv2(tmp_path_factory.mktemp("hps"), seed=4)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def scorer(config: Path, checkpoint: Path) -> HpsV2Scorer:
    return HpsV2Scorer(HpsV2Params(model=str(config), checkpoint=str(checkpoint)), CPU)


def resize_max_size(image: Image.Image, max_size: int) -> Image.Image:
    """HPSv2's ResizeMaxSize (its evaluation transform): longest side to ``max_size`` with
    bicubic resampling, then pad to a square with black, centred."""
    import torchvision.transforms.functional as TF

    scale = max_size / max(image.size)
    new = [round(d * scale) for d in image.size[::-1]]  # (h, w)
    image = TF.resize(image, new, interpolation=TF.InterpolationMode.BICUBIC)
    pad_h, pad_w = max_size - new[0], max_size - new[1]
    return TF.pad(image, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)


def reference_scores(config: Path, checkpoint: Path, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """img_score.py: the model with the checkpoint's state_dict, the PIL transform, the
    diagonal of image_features @ text_features.T."""
    import open_clip
    import torchvision.transforms.functional as TF

    open_clip.add_model_config(config)
    model = open_clip.create_model(config.stem, pretrained=None, output_dict=True)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu")["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    out = []
    with torch.no_grad():
        for array, prompt in zip(images, prompts, strict=True):
            image = resize_max_size(Image.fromarray(array), 32)
            pixels = TF.normalize(TF.to_tensor(image), mean, std).unsqueeze(0)
            outputs = model(pixels, tokenizer([prompt]))
            logits = outputs["image_features"] @ outputs["text_features"].T
            out.append(torch.diagonal(logits).item())
    return np.asarray(out)


def as_batch(images: np.ndarray, prompts: list[str]) -> Candidates:
    return Candidates(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, prompts)


def test_scores_match_img_score_py(tiny: tuple[Path, Path]) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    got = scorer(*tiny).score(as_batch(images, PROMPTS))
    assert got.dtype == torch.float32 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), reference_scores(*tiny, images, PROMPTS), atol=1e-5, rtol=0)


def test_non_square_images_are_padded_like_resize_max_size(tiny: tuple[Path, Path]) -> None:
    yy, xx = np.mgrid[0:40, 0:64]
    base = 127.5 + 120 * np.sin((xx / 64.0)[..., None] * np.array([2.0, 3.0, 5.0]) + yy[..., None] / 20.0)
    images = np.stack([base, 255 - base]).astype(np.uint8)
    got = scorer(*tiny).score(as_batch(images, PROMPTS[:2])).numpy()
    np.testing.assert_allclose(got, reference_scores(*tiny, images, PROMPTS[:2]), atol=2e-3, rtol=0)


def test_image_features_are_memoised_by_model_spec(tiny: tuple[Path, Path]) -> None:
    batch = as_batch(np.zeros((2, 32, 32, 3), np.uint8), PROMPTS[:2])
    first = scorer(*tiny).score(batch)
    assert [k[0] for k in batch._memo] == ["hpsv2_image"]
    assert torch.equal(scorer(*tiny).score(batch), first)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("visual.proj"), "missing key 'visual.proj'"),
        (lambda s: s.update({"visual.extra.weight": torch.zeros(1)}), "unexpected key 'visual.extra.weight'"),
        (lambda s: s.update({"ln_final.bias": torch.zeros(7)}), "wrong shape for 'ln_final.bias'"),
    ],
    ids=["missing", "extra", "shape"],
)
def test_checkpoint_that_does_not_fit_is_one_line_naming_the_key(tiny, tmp_path: Path, edit, match) -> None:
    config, checkpoint = tiny
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    edit(state)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointFormatError, match=match) as err:
        scorer(config, bad).setup()
    assert "\n" not in str(err.value)


def test_checkpoint_with_objects_is_refused_unopened(tiny, tmp_path: Path) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.proj": Payload(marker)}}, evil)
    with pytest.raises(CheckpointFormatError, match="not a safe tensor file") as err:
        scorer(tiny[0], evil).setup()
    assert "\n" not in str(err.value) and not marker.exists()


def test_published_checkpoint_offline_is_one_line_error() -> None:
    with pytest.raises(ModelNotFoundError, match=r"HPS_v2\.1_compressed\.pt") as err:
        HpsV2Scorer(HpsV2Params(), CPU).setup()
    assert "\n" not in str(err.value) and "hf download xswu/HPSv2" in str(err.value)


def test_config_validates_hpsv2_params(tiny) -> None:
    scoring = Scoring.model_validate({"scorers": {"hpsv2": {}}, "select": {"keep": 1}})
    assert scoring.scorers["hpsv2"] == HpsV2Params() and HpsV2Params().checkpoint == PUBLISHED
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-99'"):
        Scoring.model_validate({"scorers": {"hpsv2": {"model": "ViT-Q-99"}}, "select": {"keep": 1}})
