"""CLIP specs, loading (offline errors, safety, caching) and preprocessing/embeddings."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from open_clip.transform import PreprocessCfg, center_crop_or_pad, image_transform_v2
from pydantic import ValidationError

import winnow.scoring.clip as clip_module
from tests.pickle_payload import Payload
from winnow.models.errors import ModelNotFoundError
from winnow.models.sources import BUNDLED
from winnow.scoring.base import Candidates
from winnow.scoring.clip import (
    NAMED,
    ClipLoadError,
    ClipSpec,
    LoadedClip,
    encode_images,
    encode_texts,
    image_embeddings,
    load_clip,
    preprocess,
    text_embeddings,
)
from winnow.scoring.clip_score import ClipScoreScorer
from winnow.scoring.testing import TINY_CLIP_CONFIG, build_tiny_clip

CPU = torch.device("cpu")


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Pixels in [0.25, 0.75]: bicubic resizing then never leaves [0, 1], so the reference
    transform (which does not clamp) and ours agree exactly."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.25


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------ spec validation


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="unknown open_clip architecture 'ViT-Nope-99'"):
        ClipSpec(model="ViT-Nope-99", pretrained="openai")
    with pytest.raises(ValidationError, match=r"clip\n.*ViT-Nope-99"):
        ClipScoreScorer.Params.model_validate({"clip": {"model": "ViT-Nope-99", "pretrained": "x"}})


def test_a_scorer_names_a_clip_from_the_validation_context(tiny_clip: ClipSpec) -> None:
    named = {"small": tiny_clip}
    params = ClipScoreScorer.Params.model_validate({"clip": "small"}, context={NAMED: named})
    assert params.clip is tiny_clip  # the very spec: scorers naming it share its model and embeddings
    inline = ClipScoreScorer.Params.model_validate({"clip": tiny_clip.model_dump()}, context={NAMED: named})
    assert inline.clip == tiny_clip
    with pytest.raises(ValidationError, match=r"CLIP 'big' is not named in the top-level clip.*named: small"):
        ClipScoreScorer.Params.model_validate({"clip": "big"}, context={NAMED: named})
    with pytest.raises(ValidationError, match=r"named: none"):
        ClipScoreScorer.Params.model_validate({"clip": "small"})


def test_weights_are_required_and_schemas_bring_their_own() -> None:
    with pytest.raises(ValidationError, match="pretrained is required"):
        ClipSpec(model="ViT-B-32")
    with pytest.raises(ValidationError, match="must be empty"):
        ClipSpec(model="hf-hub:org/name", pretrained="openai")
    with pytest.raises(ValidationError, match="extra"):
        ClipSpec(model="ViT-B-32", pretrained="openai", precision="fp16")  # type: ignore[call-arg]
    ClipSpec(model="bundled:shapes-clip")
    assert ClipSpec(model="ViT-L/14", pretrained="openai").model == "ViT-L-14"
    ClipSpec(model="hf-hub:org/name")
    assert hash(ClipSpec(model="ViT-B-32", pretrained="openai")) == hash(
        ClipSpec(model="ViT-B-32", pretrained="openai")
    )


# ------------------------------------------------------------------ offline load errors


def test_pretrained_tag_offline_fails_fast_with_actionable_error() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"), CPU)
    message = one_line(err)
    assert "'ViT-B-32'" in message and "'openai'" in message
    assert "local checkpoint path" in message and "pre-download" in message


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ModelNotFoundError, match=r"unknown pretrained tag 'nope'.*openai") as err:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="nope"), CPU)
    one_line(err)


@pytest.mark.parametrize(
    "spec",
    [
        ClipSpec(model="ViT-B-32", pretrained="/nonexistent/clip.safetensors"),
        ClipSpec(model="ViT-B-32", pretrained="hf-hub:org/not-here"),
        ClipSpec(model="hf-hub:org/not-here"),
        ClipSpec(model="/nonexistent/arch.json", pretrained="/nonexistent/clip.safetensors"),
        ClipSpec(model="bundled:no-such-model"),
    ],
    ids=["missing-file", "hub-weights", "hub-model", "missing-config", "unknown-bundled"],
)
def test_missing_weights_are_model_not_found(spec: ClipSpec) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_clip(spec, CPU)
    one_line(err)


def test_openai_tags_get_quick_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip only warns on a QuickGELU mismatch; OpenAI weights need it to be right."""
    seen: dict[str, object] = {}

    def fake(name: str, **kwargs: object) -> None:
        seen.update(kwargs, name=name)
        raise RuntimeError("Failed to download weights (offline)")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    with pytest.raises(ModelNotFoundError):
        load_clip(ClipSpec(model="ViT-L-14", pretrained="openai"), CPU)
    assert seen["name"] == "ViT-L-14" and seen["force_quick_gelu"] is True
    assert seen["weights_only"] is True and seen["require_pretrained"] is True
    seen.clear()
    with pytest.raises(ModelNotFoundError):
        load_clip(ClipSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k"), CPU)
    assert "force_quick_gelu" not in seen


def test_bad_config_and_mismatched_checkpoint_are_load_errors(tmp_path: Path, tiny_clip: ClipSpec) -> None:
    not_config = tmp_path / "notclip.json"
    not_config.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ClipLoadError, match="not an open_clip model config") as err:
        load_clip(ClipSpec(model=str(not_config), pretrained=tiny_clip.pretrained), CPU)
    one_line(err)
    wider = dict(TINY_CLIP_CONFIG, embed_dim=16)
    other = tmp_path / "winnow-tiny-clip-16.json"
    other.write_text(json.dumps(wider))
    with pytest.raises(ClipLoadError, match="cannot load CLIP") as err:
        load_clip(ClipSpec(model=str(other), pretrained=tiny_clip.pretrained), CPU)
    one_line(err)


def test_pickle_checkpoint_cannot_run_code(tmp_path: Path, tiny_clip: ClipSpec) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"state_dict": Payload(marker)}, evil)
    with pytest.raises(ClipLoadError) as err:
        load_clip(ClipSpec(model=tiny_clip.model, pretrained=str(evil)), CPU)
    one_line(err)
    assert not marker.exists()


# ---------------------------------------------------------------------- loading, caching


def test_loads_once_per_process_across_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = build_tiny_clip(tmp_path, seed=1)
    calls = []
    real = open_clip.create_model_and_transforms

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", counting)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(load_clip(spec, CPU))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)
    loaded = load_clip(spec, "cpu")
    assert loaded is results[0] and not loaded.model.training
    assert loaded.image_size == (32, 32) and loaded.embed_dim == 32


@pytest.mark.skipif(
    not (BUNDLED["shapes-clip"] / "shapes-clip.safetensors").exists(),
    reason="bundled shapes-clip not trained yet (make train-shapes)",
)
def test_bundled_shapes_clip_loads() -> None:
    spec = ClipSpec(model="bundled:shapes-clip")
    emb = encode_images(images(2, 32, 32), spec, CPU)
    assert emb.shape[0] == 2
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


# ------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (40, 64), (20, 28)])
def test_preprocess_matches_open_clip_inference_transform(tiny_clip: ClipSpec, size: tuple[int, int]) -> None:
    loaded = load_clip(tiny_clip, CPU)
    reference = image_transform_v2(PreprocessCfg(**loaded.model.visual.preprocess_cfg), is_train=False)
    x = images(3, *size)
    expected = torch.stack([reference(img) for img in x])
    torch.testing.assert_close(preprocess(x, loaded), expected, atol=1e-5, rtol=0)


def _with_mode(base: LoadedClip, mode: str) -> LoadedClip:
    return LoadedClip(**{**base.__dict__, "resize_mode": mode})


def test_squash_mode_matches_open_clip(tiny_clip: ClipSpec) -> None:
    base = load_clip(tiny_clip, CPU)
    cfg = PreprocessCfg(**{**base.model.visual.preprocess_cfg, "resize_mode": "squash"})
    x = images(2, 48, 40)
    expected = torch.stack([image_transform_v2(cfg, is_train=False)(img) for img in x])
    torch.testing.assert_close(preprocess(x, _with_mode(base, "squash")), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(48, 40), (20, 36)])
def test_longest_mode_matches_open_clip_resize_then_pad(tiny_clip: ClipSpec, size: tuple[int, int]) -> None:
    # open_clip's ResizeKeepRatio reads PIL's .size, so rebuild its steps on tensors.
    base = load_clip(tiny_clip, CPU)
    x = images(2, *size)
    ratio = max(size[0] / 32, size[1] / 32)
    resized = TF.resize(
        x,
        [round(size[0] / ratio), round(size[1] / ratio)],
        antialias=True,
        interpolation=TF.InterpolationMode.BICUBIC,
    )
    padded = center_crop_or_pad(resized, [32, 32], fill=0)
    expected = TF.normalize(
        padded, base.model.visual.preprocess_cfg["mean"], base.model.visual.preprocess_cfg["std"]
    )
    torch.testing.assert_close(preprocess(x, _with_mode(base, "longest")), expected, atol=1e-5, rtol=0)


def test_preprocess_rejects_wrong_layout(tiny_clip: ClipSpec) -> None:
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        preprocess(torch.zeros(2, 32, 32, 3), load_clip(tiny_clip, CPU))


# ---------------------------------------------------------------------------- embeddings


def test_embeddings_are_normalised_and_chunking_is_invisible(
    tiny_clip: ClipSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = images(5, 32, 32)
    whole = encode_images(x, tiny_clip, CPU)
    assert whole.shape == (5, 32) and whole.dtype == torch.float32
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(5))
    texts = ["a red circle", "a blue square on a gray background", "a"]
    whole_text = encode_texts(texts, tiny_clip, CPU)
    monkeypatch.setattr(clip_module, "CHUNK", 2)
    torch.testing.assert_close(encode_images(x, tiny_clip, CPU), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(encode_texts(texts, tiny_clip, CPU), whole_text, atol=1e-6, rtol=0)
    assert encode_images(x[:0], tiny_clip, CPU).shape == (0, 32)


def test_batch_memo_encodes_each_image_and_prompt_once(
    tiny_clip: ClipSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_clip(tiny_clip, CPU).model
    image_rows: list[int] = []
    text_rows: list[int] = []
    real_image, real_text = model.encode_image, model.encode_text
    monkeypatch.setattr(model, "encode_image", lambda x: image_rows.append(len(x)) or real_image(x))
    monkeypatch.setattr(model, "encode_text", lambda t: text_rows.append(len(t)) or real_text(t))
    prompts = ["a red circle"] * 3 + ["a blue square"] * 3
    batch = Candidates(images=images(6, 32, 32), prompts=prompts)
    first = image_embeddings(batch, tiny_clip, CPU)
    assert image_embeddings(batch, tiny_clip, CPU) is first
    texts = text_embeddings(batch, tiny_clip, CPU)
    assert text_embeddings(batch, tiny_clip, CPU) is texts
    assert image_rows == [6] and text_rows == [2]  # two distinct prompts
    torch.testing.assert_close(texts[0], texts[2]) and torch.testing.assert_close(texts[3], texts[5])
    torch.testing.assert_close(texts, encode_texts(prompts, tiny_clip, CPU))
