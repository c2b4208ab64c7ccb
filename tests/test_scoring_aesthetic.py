"""LAION aesthetic head (published file, safe loading, layouts) and the aesthetic scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.pickle_payload import Payload
from winnow.models.errors import ModelNotFoundError
from winnow.models.sources import BUNDLED
from winnow.scoring.aesthetic import AestheticHead, AestheticScorer, HeadFormatError
from winnow.scoring.base import REGISTRY, Candidates
from winnow.scoring.clip import ClipSpec, encode_images, load_clip
from winnow.scoring.clip_score import ClipScoreScorer
from winnow.scoring.testing import build_tiny_aesthetic_head

CPU = torch.device("cpu")
SHARED = Path(__file__).resolve().parents[2] / "shared"
LAION = SHARED / "weights" / "laion-aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
needs_laion = pytest.mark.skipif(not LAION.exists(), reason=f"LAION head not found at {LAION}")


def reference_mlp(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The LAION MLP in float64 numpy: Linear layers in index order, dropout = identity."""
    indices = sorted({int(k.split(".")[1]) for k in state})
    for i in indices:
        w = state[f"layers.{i}.weight"].double().numpy()
        b = state[f"layers.{i}.bias"].double().numpy()
        x = x @ w.T + b
    return x[:, 0]


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@needs_laion
def test_published_laion_head_matches_reference_mlp() -> None:
    head = AestheticHead.from_file(LAION)
    linears = [i for i, m in enumerate(head.layers) if isinstance(m, nn.Linear)]
    assert linears == [0, 2, 4, 6, 7] and head.in_features == 768
    assert [head.layers[i].out_features for i in linears] == [1024, 128, 64, 16, 1]
    assert not head.training
    state = torch.load(LAION, map_location="cpu", weights_only=True)
    x = unit_vectors(32, 768, seed=0)
    with torch.inference_mode():
        got = head(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(got, reference_mlp(state, x), atol=1e-4, rtol=0)


def test_refuses_pickles_with_arbitrary_objects(tmp_path: Path) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    state = {"layers.0.weight": torch.zeros(1, 4), "layers.0.bias": Payload(marker)}
    torch.save(state, evil)
    with pytest.raises(HeadFormatError, match="not a safe tensor file") as err:
        AestheticHead.from_file(evil)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_small_laion_layout_heads_load_from_both_formats(tmp_path: Path, suffix: str) -> None:
    path = build_tiny_aesthetic_head(tmp_path / f"head{suffix}", dim=32)
    head = AestheticHead.from_file(path)
    assert [type(m).__name__ for m in head.layers] == [
        "Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout", "Linear", "Linear"
    ]  # fmt: skip
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    x = unit_vectors(5, 32, seed=1)
    with torch.inference_mode():
        got = head(torch.from_numpy(x).float()).numpy()
    assert got.shape == (5,)
    np.testing.assert_allclose(got, reference_mlp(state, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)}, r"unexpected entry 'fc\."),
        ({"layers.0.weight": torch.zeros(1, 4)}, "needs both weight and bias"),
        (
            {
                "layers.0.weight": torch.zeros(8, 4),
                "layers.0.bias": torch.zeros(8),
                "layers.2.weight": torch.zeros(1, 6),
                "layers.2.bias": torch.zeros(1),
            },
            "takes 6 inputs but gets 8",
        ),
        ({"layers.0.weight": torch.zeros(2, 4), "layers.0.bias": torch.zeros(2)}, "one output"),
    ],
    ids=["foreign-keys", "missing-bias", "widths-do-not-chain", "two-outputs"],
)
def test_rejects_non_laion_state_dicts(tmp_path: Path, state: dict, match: str) -> None:
    path = tmp_path / "head.safetensors"
    save_file(state, str(path))
    with pytest.raises(HeadFormatError, match=match):
        AestheticHead.from_file(path)


def test_missing_head_is_model_not_found(tiny_clip: ClipSpec) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        AestheticHead.from_file("/nonexistent/head.pth")
    scorer = AestheticScorer(AestheticScorer.Params(clip=tiny_clip, head="/nonexistent/head.pth"), CPU)
    with pytest.raises(ModelNotFoundError, match=r"aesthetic head '/nonexistent/head.pth' does not exist"):
        scorer.setup()


@needs_laion
def test_head_and_clip_widths_must_agree(tiny_clip: ClipSpec) -> None:
    scorer = AestheticScorer(AestheticScorer.Params(clip=tiny_clip, head=str(LAION)), CPU)
    with pytest.raises(HeadFormatError, match=r"takes 768-d embeddings but CLIP .* gives 32-d"):
        scorer.setup()


def test_scorer_is_head_of_normalised_clip_embedding(tiny_clip: ClipSpec, tmp_path: Path) -> None:
    assert REGISTRY["aesthetic"] is AestheticScorer
    head_file = build_tiny_aesthetic_head(tmp_path / "head.safetensors", dim=32, seed=2)
    scorer = AestheticScorer(AestheticScorer.Params(clip=tiny_clip, head=str(head_file)), CPU)
    scorer.setup()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = scorer.score(Candidates(images=images, prompts=["ignored"] * 4))
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (4,)
    from safetensors.torch import load_file

    embeddings = encode_images(images, tiny_clip, CPU).half().double().numpy()  # as stored
    np.testing.assert_allclose(
        got.numpy(), reference_mlp(load_file(str(head_file)), embeddings), atol=1e-5, rtol=0
    )


def test_head_named_by_a_hub_reference(
    tiny_clip: ClipSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from winnow.models.sources import resolve_file

    commit = "b" * 40  # the hub cache keeps a file at snapshots/<commit>/<path in repo>
    cached = tmp_path / "models--org--heads" / "snapshots" / commit / "laion" / "head.safetensors"
    build_tiny_aesthetic_head(cached, dim=32, seed=3)
    asked = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *args, **kwargs: asked.append(args) or str(cached)
    )
    resolve_file.cache_clear()
    ref = f"hf://org/heads@{commit}/laion/head.safetensors"
    scorer = AestheticScorer(AestheticScorer.Params(clip=tiny_clip, head=ref), CPU)
    scorer.setup()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    got = scorer.score(Candidates(images=images, prompts=["ignored"] * 3))
    from safetensors.torch import load_file

    embeddings = encode_images(images, tiny_clip, CPU).half().double().numpy()  # as stored
    expected = reference_mlp(load_file(str(cached)), embeddings)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)
    assert asked == [("org/heads", "laion/head.safetensors")]  # once: later batches use the resolved file
    resolve_file.cache_clear()


def test_clip_score_and_aesthetic_share_one_image_embedding(
    tiny_clip: ClipSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head_file = build_tiny_aesthetic_head(tmp_path / "head.safetensors", dim=32)
    scorers = [
        ClipScoreScorer(ClipScoreScorer.Params(clip=tiny_clip), CPU),
        AestheticScorer(AestheticScorer.Params(clip=tiny_clip, head=str(head_file)), CPU),
    ]
    for scorer in scorers:
        scorer.setup()
    model = load_clip(tiny_clip, CPU).model
    calls: list[int] = []
    real = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(len(x)) or real(x))
    batch = Candidates(images=torch.rand(3, 3, 32, 32), prompts=["a", "b", "c"])
    for scorer in scorers:
        scorer.score(batch)
    assert calls == [3]


@pytest.mark.skipif(
    not (BUNDLED["shapes-aesthetic"].exists() and BUNDLED["shapes-clip"].exists()),
    reason="bundled shapes models not trained yet (make train-shapes)",
)
def test_bundled_shapes_aesthetic_scores() -> None:
    params = AestheticScorer.Params(
        clip=ClipSpec(model="bundled:shapes-clip"), head="bundled:shapes-aesthetic"
    )
    scorer = AestheticScorer(params, CPU)
    scorer.setup()
    got = scorer.score(Candidates(images=torch.rand(2, 3, 32, 32), prompts=["x", "y"]))
    assert got.shape == (2,) and torch.isfinite(got).all()
