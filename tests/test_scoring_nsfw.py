"""LAION's CLIP-based NSFW head (the published file against the publisher's computation, safe
loading, layouts) and the nsfw scorer (a head on the shared CLIP image embedding, a ceiling in
the policy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.ci import unavailable
from tests.pickle_payload import Payload
from winnow.models.errors import ModelNotFoundError
from winnow.scoring.aesthetic import AestheticScorer
from winnow.scoring.base import REGISTRY, Candidates
from winnow.scoring.clip import ClipSpec, encode_images, load_clip
from winnow.scoring.head import HeadScorer
from winnow.scoring.head_file import HeadFormatError
from winnow.scoring.nsfw import NSFWHead, NSFWScorer
from winnow.scoring.select import Policy, select

CPU = torch.device("cpu")
PUBLISHED = ("weights", "laion-nsfw", "clip_ViT-L-14_openai_binary_nsfw_head.pth")


@pytest.fixture(scope="module")
def published(shared: Path) -> Path:
    path = shared.joinpath(*PUBLISHED)
    if not path.is_file():
        unavailable(f"LAION NSFW head not found at {path}")
    return path


def reference(state: dict[str, torch.Tensor], e: np.ndarray) -> np.ndarray:
    """The publisher's reference module, written out from its description in float64:
    ``(e - mean) / sqrt(variance)``, then Linear-ReLU three times, Linear, Sigmoid."""
    s = {k: v.double().numpy() for k, v in state.items()}
    x = (e - s["norm.mean"]) / np.sqrt(s["norm.variance"])
    for i in (1, 2, 3):
        x = np.maximum(x @ s[f"linear_{i}.weight"].T + s[f"linear_{i}.bias"], 0.0)
    logit = x @ s["linear_4.weight"].T + s["linear_4.bias"]
    return 1.0 / (1.0 + np.exp(-logit[:, 0]))


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tiny_state(dim: int, seed: int = 0, widths: tuple[int, ...] = (16, 24, 8)) -> dict[str, torch.Tensor]:
    """A random head in the published layout, ``dim -> widths -> 1``."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        "norm.mean": torch.randn(dim, generator=gen) * 0.05,
        "norm.variance": torch.rand(dim, generator=gen) * 0.01 + 1e-3,
    }
    for i, (fan_in, fan_out) in enumerate(zip((dim, *widths), (*widths, 1), strict=True), 1):
        state[f"linear_{i}.weight"] = torch.randn(fan_out, fan_in, generator=gen) * fan_in**-0.5
        state[f"linear_{i}.bias"] = torch.randn(fan_out, generator=gen) * 0.1
    return state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ClipSpec:
    from winnow.scoring.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=7)


def test_published_head_computes_what_the_reference_module_computes(published: Path) -> None:
    head = NSFWHead.from_file(published)
    assert not head.training and head.in_features == 768
    assert [getattr(head, f"linear_{i}").out_features for i in (1, 2, 3, 4)] == [64, 512, 256, 1]
    state = torch.load(published, map_location="cpu", weights_only=True)
    e = unit_vectors(64, 768, seed=0)
    with torch.inference_mode():
        got = head(torch.from_numpy(e).float()).numpy()
    want = reference(state, e)
    assert got.shape == (64,) and ((got >= 0) & (got <= 1)).all()
    assert want.min() < 0.1 and want.max() > 0.5  # the inputs reach both ends: a real comparison
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_refuses_pickles_with_arbitrary_objects(tmp_path: Path) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({**tiny_state(8), "norm.count": Payload(marker)}, evil)
    with pytest.raises(HeadFormatError, match="not a safe tensor file") as err:
        NSFWHead.from_file(evil)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_small_heads_of_the_published_layout_load_from_both_formats(tmp_path: Path, suffix: str) -> None:
    state, path = tiny_state(32, seed=1), tmp_path / f"head{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    head = NSFWHead.from_file(path)
    e = unit_vectors(6, 32, seed=2)
    with torch.inference_mode():
        got = head(torch.from_numpy(e).float()).numpy()
    np.testing.assert_allclose(got, reference(state, e), atol=1e-6, rtol=0)


def _without(key: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tiny_state(8).items() if k != key}


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (_without("norm.variance"), r"not the LAION NSFW head layout \(missing norm\.variance\)"),
        ({**tiny_state(8), "linear_5.weight": torch.zeros(1, 1)}, r"\(unexpected linear_5\.weight\)"),
        (
            {"layers.0.weight": torch.zeros(1, 8), "layers.0.bias": torch.zeros(1)},
            r"missing linear_1\.bias, .*norm\.variance; unexpected layers\.0\.bias, layers\.0\.weight",
        ),
        ({**tiny_state(8), "linear_2.weight": torch.zeros(24, 15)}, "linear_2 takes 15 inputs but gets 16"),
        ({**tiny_state(8), "linear_4.weight": torch.zeros(2, 8), "linear_4.bias": torch.zeros(2)}, "output"),
        ({**tiny_state(8), "linear_3.bias": torch.zeros(3)}, "linear_3 is not a Linear layer"),
        ({**tiny_state(8), "norm.mean": torch.zeros(9)}, "norm.mean must have 8 values"),
        ({**tiny_state(8), "norm.variance": torch.zeros(8)}, "norm.variance must be positive"),
    ],
    ids=["missing-key", "extra-key", "aesthetic-layout", "widths", "two-outputs", "bias", "mean", "variance"],
)
def test_rejects_other_state_dicts_in_one_line(tmp_path: Path, state: dict, match: str) -> None:
    path = tmp_path / "head.safetensors"
    save_file(state, str(path))
    with pytest.raises(HeadFormatError, match=match) as err:
        NSFWHead.from_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_head_is_model_not_found(tiny: ClipSpec) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nsfw head '/nonexistent/head.pth' does not exist"):
        NSFWHead.from_file("/nonexistent/head.pth")
    scorer = NSFWScorer(NSFWScorer.Params(clip=tiny, head="/nonexistent/head.pth"), CPU)
    with pytest.raises(ModelNotFoundError, match=r"nsfw head .*/nonexistent/head.pth"):
        scorer.setup()


def test_head_and_clip_widths_must_agree(tiny: ClipSpec, published: Path) -> None:
    scorer = NSFWScorer(NSFWScorer.Params(clip=tiny, head=str(published)), CPU)
    with pytest.raises(HeadFormatError, match=r"takes 768-d embeddings but CLIP .* gives 32-d"):
        scorer.setup()


def test_scorer_is_the_head_on_the_shared_normalised_embedding(
    tiny: ClipSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert REGISTRY["nsfw"] is NSFWScorer and issubclass(NSFWScorer, HeadScorer)
    state = tiny_state(32, seed=3)
    save_file(state, str(tmp_path / "nsfw.safetensors"))
    from winnow.scoring.testing import build_tiny_aesthetic_head

    aesthetic_head = build_tiny_aesthetic_head(tmp_path / "aesthetic.safetensors", dim=32)
    nsfw = NSFWScorer(NSFWScorer.Params(clip=tiny, head=str(tmp_path / "nsfw.safetensors")), CPU)
    aesthetic = AestheticScorer(AestheticScorer.Params(clip=tiny, head=str(aesthetic_head)), CPU)
    for scorer in (nsfw, aesthetic):
        scorer.setup()
    model = load_clip(tiny, CPU).model
    calls: list[int] = []
    real = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(len(x)) or real(x))
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = Candidates(images=images, prompts=["ignored"] * 5)
    aesthetic.score(batch)
    got = nsfw.score(batch)
    assert calls == [5]  # one CLIP pass for both heads
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (5,)
    # Head scorers read the shared embedding rounded to float16, as the catalog stores it.
    embeddings = encode_images(images, tiny, CPU).half().double().numpy()
    np.testing.assert_allclose(got.numpy(), reference(state, embeddings), atol=1e-6, rtol=0)
    stored = torch.from_numpy(embeddings).float()  # what winnow rescore reads back
    np.testing.assert_allclose(nsfw.score_embeddings(stored).numpy(), got.numpy(), atol=1e-6, rtol=0)


def test_a_ceiling_rejects_likely_nsfw_candidates_and_nsfw_ranks_nothing_unless_weighted() -> None:
    scores = {"clip_score": np.array([30.0, 25.0, 20.0, 28.0]), "nsfw": np.array([0.9, 0.1, 0.2, 0.5])}
    policy = Policy(keep=2, ceilings={"nsfw": 0.5})  # 0.5 sits on the ceiling: inclusive, it passes
    assert policy.weight("nsfw") == 0 and policy.weight("clip_score") == 1
    chosen = select(scores, [0] * 4, policy)
    assert chosen.reason == ["above_ceiling:nsfw", None, "not_top_k", None]
    assert chosen.rank.tolist() == [1, 3, 4, 2]  # by clip score alone
    safer = select(scores, [0] * 4, policy.model_copy(update={"weights": {"nsfw": -10.0}}))
    assert safer.rank.tolist() == [4, 1, 2, 3]  # a negative weight, when given, prefers safer images
