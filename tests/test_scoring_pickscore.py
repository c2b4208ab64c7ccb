"""PickScore scorer: a tiny CLIPModel in PickScore's on-disk layout, parity with the authors'
reference computation, strict loading, one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from winnow.models.errors import ModelNotFoundError
from winnow.models.sources import BUNDLED
from winnow.pipeline.config import Scoring
from winnow.scoring.base import Candidates
from winnow.scoring.pickscore import PickScoreParams, PickScoreScorer, RewardModelError, clear_cache
from winnow.scoring.testing import build_tiny_pickscore

CPU = torch.device("cpu")
PROMPTS = ["a red circle", "a red circle", "a blue square on a black background", "a cat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pickscore(tmp_path_factory.mktemp("pickscore"), seed=3)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def scorer(folder: Path) -> PickScoreScorer:
    return PickScoreScorer(PickScoreParams(model=str(folder), processor=None), CPU)


def uint8_images(n: int, h: int, w: int, seed: int, smooth: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    # Low-frequency images: resampling filters then agree closely (noise exaggerates them).
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    freq = rng.uniform(1, 3, (n, 1, 1, 3))
    return (127.5 + 120 * np.sin(freq * (xx[None, ..., None] * 3 + yy[None, ..., None] * 2) + phase)).astype(
        np.uint8
    )


def reference_scores(folder: Path, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """PickScore's published inference code, per prompt, through the PIL processor."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts, strict=True):
            pixels = processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
            text = tokenizer(prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            image_embs = model.get_image_features(pixel_values=pixels).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            out.append((model.logit_scale.exp() * (text_embs @ image_embs.T))[0, 0].item())
    return np.asarray(out)


def as_batch(images: np.ndarray, prompts: list[str]) -> Candidates:
    return Candidates(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, prompts)


def test_scores_match_the_reference_computation(tiny: Path) -> None:
    images = uint8_images(4, 32, 32, seed=0)
    got = scorer(tiny).score(as_batch(images, PROMPTS))
    assert got.dtype == torch.float32 and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), reference_scores(tiny, images, PROMPTS), atol=1e-4, rtol=0)
    # the logit scale (3.0 in the fixture) is applied: |score| may exceed 1
    assert got.abs().max() <= np.exp(3.0) + 1e-4


def test_resized_and_cropped_like_the_processor(tiny: Path) -> None:
    """Non-square, larger images: the tensor resize (short side to 32) and center crop follow
    CLIPImageProcessor; only the resampling filter's arithmetic differs from PIL's."""
    images = uint8_images(3, 48, 72, seed=1, smooth=True)
    got = scorer(tiny).score(as_batch(images, PROMPTS[:3])).numpy()
    want = reference_scores(tiny, images, PROMPTS[:3])
    np.testing.assert_allclose(got, want, atol=0.02, rtol=0)


def test_image_features_are_memoised_per_model(tiny: Path) -> None:
    batch = as_batch(uint8_images(2, 32, 32, seed=2), PROMPTS[:2])
    first = scorer(tiny).score(batch)
    keys = [k for k in batch._memo if k[0] == "pickscore_image"]
    assert len(keys) == 1 and batch._memo[keys[0]].shape == (2, 16)
    assert torch.equal(scorer(tiny).score(batch), first)
    assert [k for k in batch._memo if k[0] == "clip_image"] == []  # not the open_clip embedding


@pytest.mark.parametrize("edit", ["missing", "extra"])
def test_checkpoint_with_wrong_keys_is_one_line_naming_the_key(tiny: Path, tmp_path: Path, edit: str) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(tiny, folder)
    state = load_file(str(folder / "model.safetensors"))
    if edit == "missing":
        del state["visual_projection.weight"]
        key = "visual_projection.weight"
    else:
        state["text_model.extra_head.weight"] = torch.zeros(2, 2)
        key = "text_model.extra_head.weight"
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RewardModelError, match=key) as err:
        scorer(folder).setup()
    assert "\n" not in str(err.value)


def test_pickle_only_checkpoints_are_refused(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    shutil.copytree(tiny, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(RewardModelError, match=r"no \.safetensors weights") as err:
        scorer(folder).setup()
    assert "\n" not in str(err.value)


def test_hub_model_offline_is_one_line_error() -> None:
    # conftest sets HF_HUB_OFFLINE: the published default cannot be fetched here.
    with pytest.raises(ModelNotFoundError, match="yuvalkirstain/PickScore_v1") as err:
        PickScoreScorer(PickScoreParams(), CPU).setup()
    assert "\n" not in str(err.value)


def test_config_validates_pickscore_params(tiny: Path) -> None:
    scoring = Scoring.model_validate(
        {"scorers": {"pickscore": {"model": str(tiny), "processor": None}}, "select": {"keep": 1}}
    )
    assert scoring.scorers["pickscore"] == PickScoreParams(model=str(tiny), processor=None)
    with pytest.raises(ValueError, match=r"unknown key .scorers\.pickscore\.softmax"):
        Scoring.model_validate({"scorers": {"pickscore": {"softmax": True}}, "select": {"keep": 1}})


needs_shapes = pytest.mark.skipif(
    not (BUNDLED["shapes-clip"] / "shapes-clip.safetensors").exists(), reason="shapes weights not built"
)


@needs_shapes
def test_shapes_clip_converts_to_a_clipmodel_exactly(tmp_path: Path) -> None:
    """shapes-pick's starting point: the open_clip shapes CLIP as a transformers CLIPModel with
    the pruned tokenizer computes the same embeddings through the pickscore loader."""
    from winnow.models.shapes.data import FULL_CAPTIONS, SHORT_CAPTIONS, render_pool
    from winnow.models.shapes.evaluate import as_tensor
    from winnow.models.shapes.train_pick import all_texts, to_transformers
    from winnow.scoring import clip as oc
    from winnow.scoring.pickscore import encode_images, encode_texts, load_pickscore

    spec = oc.ClipSpec(model="bundled:shapes-clip")
    model, tokenizer = to_transformers(oc.load_clip(spec, CPU).model, tmp_path, all_texts())
    assert len(tokenizer) < 600  # the token table is cut to the world's words
    model.save_pretrained(tmp_path)
    reward = load_pickscore(PickScoreParams(model=str(tmp_path), processor=None), CPU)
    images = as_tensor(render_pool(16, seed=3)[0])
    texts = FULL_CAPTIONS + SHORT_CAPTIONS
    torch.testing.assert_close(
        encode_images(images, reward), oc.encode_images(images, spec, CPU), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        encode_texts(texts, reward), oc.encode_texts(texts, spec, CPU), atol=1e-5, rtol=0
    )


@needs_shapes
@pytest.mark.skipif(
    not (BUNDLED["shapes-pick"] / "model.safetensors").exists(), reason="shapes-pick not built"
)
def test_bundled_shapes_pick_prefers_the_image_its_prompt_describes() -> None:
    from winnow.models.shapes.data import FULL_CAPTIONS, render_pool
    from winnow.models.shapes.evaluate import as_tensor

    images, ids = render_pool(64, seed=11)
    own = [FULL_CAPTIONS[i] for i in ids]
    other = [FULL_CAPTIONS[(i + 23) % len(FULL_CAPTIONS)] for i in ids]  # another scene's caption
    pick = PickScoreScorer(PickScoreParams(model="bundled:shapes-pick", processor=None), CPU)
    x = as_tensor(images)
    right = pick.score(Candidates(x, own))
    wrong = pick.score(Candidates(x, other))
    assert (right > wrong).float().mean() >= 0.9
