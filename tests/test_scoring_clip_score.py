"""CLIP score against a reference computed straight from open_clip (tensor transforms, no PIL)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from pydantic import ValidationError

from winnow.scoring.base import REGISTRY, Candidates, build_scorers
from winnow.scoring.clip import ClipSpec
from winnow.scoring.clip_score import ClipScoreScorer

CPU = torch.device("cpu")
PROMPTS = ["a red circle", "a blue square on a gray background", "a green triangle", "a cat"]


def reference_cosine(spec: ClipSpec, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image, text) from a freshly built open_clip model and its own inference transform."""
    assert spec.pretrained is not None
    open_clip.add_model_config(spec.model)
    name = spec.model.rsplit("/", 1)[-1].removesuffix(".json")
    model = open_clip.create_model(name, pretrained=spec.pretrained, weights_only=True).eval()
    transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    with torch.no_grad():
        pixels = torch.stack([transform(img) for img in images])
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(open_clip.get_tokenizer(name)(prompts)), dim=-1)
    return (img * txt).sum(-1)


def test_matches_torchmetrics_definition(tiny_clip: ClipSpec) -> None:
    n = 16
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 40, 48, generator=gen) * 0.5 + 0.25  # resized: bicubic stays in [0,1]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    scorer = ClipScoreScorer(ClipScoreScorer.Params(clip=tiny_clip), CPU)
    scorer.setup()
    got = scorer.score(Candidates(images=images, prompts=prompts))
    cos = reference_cosine(tiny_clip, images, prompts)
    assert cos.std() > 0.01  # distinct values, not a degenerate constant
    torch.testing.assert_close(got, (100 * cos).clamp(min=0), atol=1e-4, rtol=0)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (n,)
    assert ((got >= 0) & (got <= 100)).all()


def test_formula_scale_and_clamp(tiny_clip: ClipSpec) -> None:
    """100 for identical directions, 60 for cos 0.6, 0 for orthogonal and for opposite."""
    e1, e2 = torch.eye(4)[:2]
    image = torch.stack([e1, e1, e1, e1])
    text = torch.stack([e1, 0.6 * e1 + 0.8 * e2, e2, -e1])
    batch = Candidates(images=torch.zeros(4, 3, 32, 32), prompts=["p"] * 4)
    # Seed the batch memo: the scorer reads the shared embeddings instead of computing them.
    batch.memo(("clip_image", tiny_clip), lambda: image)
    batch.memo(("clip_text", tiny_clip), lambda: text)
    got = ClipScoreScorer(ClipScoreScorer.Params(clip=tiny_clip), CPU).score(batch)
    torch.testing.assert_close(got, torch.tensor([100.0, 60.0, 0.0, 0.0]))


def test_registered_and_built_from_config(tiny_clip: ClipSpec) -> None:
    assert REGISTRY["clip_score"] is ClipScoreScorer
    (scorer,) = build_scorers({"clip_score": ClipScoreScorer.Params(clip=tiny_clip)}, CPU)
    assert isinstance(scorer, ClipScoreScorer) and scorer.params.clip == tiny_clip
    with pytest.raises(TypeError, match="takes a ClipScoreParams, not dict"):  # validated by the config
        build_scorers({"clip_score": {"clip": tiny_clip.model_dump()}}, CPU)
    with pytest.raises(ValidationError):
        ClipScoreScorer.Params(clip=tiny_clip, layer=3)  # type: ignore[call-arg]


def test_score_is_per_candidate_and_order_independent(tiny_clip: ClipSpec) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=gen)
    prompts = ["a red circle", "a cat", "a red circle", "a dog", "a cat", "a red circle"]
    scorer = ClipScoreScorer(ClipScoreScorer.Params(clip=tiny_clip), CPU)
    full = scorer.score(Candidates(images=images, prompts=prompts))
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    shuffled = scorer.score(Candidates(images=images[perm], prompts=[prompts[i] for i in perm]))
    torch.testing.assert_close(shuffled, full[perm], atol=1e-5, rtol=0)
    single = scorer.score(Candidates(images=images[:1], prompts=prompts[:1]))
    torch.testing.assert_close(single, full[:1], atol=1e-5, rtol=0)
