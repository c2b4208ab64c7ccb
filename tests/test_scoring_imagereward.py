"""ImageReward scorer, with a fake of the image-reward package's model class (the package's
pins conflict with the core install, so it is not installed here): the extra's absence is a
one-line error, the published normalisation and the package's preprocessing are reproduced,
loading is safe and strict."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from winnow.scoring.base import Candidates
from winnow.scoring.hpsv2 import CheckpointFormatError
from winnow.scoring.imagereward import (
    ExtraMissingError,
    ImageRewardParams,
    ImageRewardScorer,
    clear_cache,
)

CPU = torch.device("cpu")
PROMPTS = ["a red circle", "a blue square on a black background", "a red circle"]
WORDS = ["a", "red", "blue", "circle", "square", "on", "black", "background"]


class FakeTokenizer:
    """BertTokenizer's call shape: [CLS] words [SEP], padded to max_length with [PAD] = 0."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        from transformers import BatchEncoding

        assert padding == "max_length" and truncation and return_tensors == "pt"
        ids = [
            [1, *(2 + WORDS.index(w) if w in WORDS else 10 for w in t.split()), 11][:max_length]
            for t in texts
        ]
        mask = [[1] * len(i) + [0] * (max_length - len(i)) for i in ids]
        ids = [i + [0] * (max_length - len(i)) for i in ids]
        return BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})


class FakeTextEncoder(nn.Module):
    """BLIP's multimodal text encoder's interface: text tokens attend to the image tokens."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, width)
        self.cross = nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        x = self.embed(input_ids) * attention_mask[..., None]
        y, _ = self.cross(x, encoder_hidden_states, encoder_hidden_states)
        return types.SimpleNamespace(last_hidden_state=x + y)


class FakeImageReward(nn.Module):
    """The package's ``ImageReward(med_config, device)``: ``blip.{visual_encoder, text_encoder,
    tokenizer}``, ``mlp`` and the published ``mean``/``std``; widths from ``med_config``."""

    def __init__(self, med_config: str, device: str = "cpu") -> None:
        super().__init__()
        width = json.loads(Path(med_config).read_text())["hidden_size"]
        self.device = device
        self.blip = nn.Module()
        self.blip.visual_encoder = nn.Sequential(nn.Conv2d(3, width, 32, 32), nn.Flatten(2))
        self.blip.visual_encoder.append(_Transpose())
        self.blip.text_encoder = FakeTextEncoder(width)
        self.blip.tokenizer = FakeTokenizer()
        self.mlp = nn.Sequential(nn.Linear(width, 8), nn.Linear(8, 1))
        self.mean = 0.16717362830052426
        self.std = 1.0333394966054072


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)  # (n, width, tokens) -> (n, tokens, width)


@pytest.fixture
def fake_package(monkeypatch: pytest.MonkeyPatch) -> None:
    package, module = types.ModuleType("ImageReward"), types.ModuleType("ImageReward.ImageReward")
    module.ImageReward = FakeImageReward
    package.ImageReward = module
    monkeypatch.setitem(sys.modules, "ImageReward", package)
    monkeypatch.setitem(sys.modules, "ImageReward.ImageReward", module)
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint and med_config in the published files' formats (a plain state dict)."""
    med_config = tmp_path / "med_config.json"
    med_config.write_text(json.dumps({"hidden_size": 16, "architectures": ["BertModel"]}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = FakeImageReward(str(med_config)).state_dict()
    checkpoint = tmp_path / "ImageReward.pt"
    torch.save(state, checkpoint)
    return checkpoint, med_config


def scorer(published: tuple[Path, Path]) -> ImageRewardScorer:
    checkpoint, med_config = published
    return ImageRewardScorer(ImageRewardParams(checkpoint=str(checkpoint), med_config=str(med_config)), CPU)


def reference(published: tuple[Path, Path], images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The package's ``ImageReward.score`` per image: its PIL transform, BLIP, the MLP, the
    published normalisation."""
    from torchvision import transforms as T

    checkpoint, med_config = published
    model = FakeImageReward(str(med_config))
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    transform = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip
    out = []
    with torch.no_grad():
        for array, prompt in zip(images, prompts, strict=True):
            text = model.blip.tokenizer([prompt], padding="max_length", truncation=True, max_length=35,
                                        return_tensors="pt")  # fmt: skip
            embeds = model.blip.visual_encoder(transform(Image.fromarray(array)).unsqueeze(0))
            atts = torch.ones(embeds.size()[:-1], dtype=torch.long)
            output = model.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                             encoder_hidden_states=embeds, encoder_attention_mask=atts,
                                             return_dict=True)  # fmt: skip
            raw = model.mlp(output.last_hidden_state[:, 0, :].float())
            out.append(((raw - model.mean) / model.std).item())
    return np.asarray(out)


def as_batch(images: np.ndarray, prompts: list[str]) -> Candidates:
    return Candidates(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, prompts)


def test_without_the_extra_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # as if not installed
    with pytest.raises(ExtraMissingError, match=r"pip install 'winnow\[imagereward\]'") as err:
        ImageRewardScorer(ImageRewardParams(), CPU).setup()
    assert "\n" not in str(err.value)


def test_rewards_match_the_package_computation(fake_package, published) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    got = scorer(published).score(as_batch(images, PROMPTS))
    assert got.dtype == torch.float32 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), reference(published, images, PROMPTS), atol=1e-5, rtol=0)


def test_resized_like_the_package_transform(fake_package, published) -> None:
    yy, xx = np.mgrid[0:256, 0:320]
    base = 127.5 + 120 * np.sin((xx / 320.0)[..., None] * np.array([2.0, 3.0, 5.0]) + yy[..., None] / 90.0)
    images = np.stack([base, 255 - base]).astype(np.uint8)
    got = scorer(published).score(as_batch(images, PROMPTS[:2])).numpy()
    np.testing.assert_allclose(got, reference(published, images, PROMPTS[:2]), atol=2e-3, rtol=0)


def test_image_tokens_are_memoised(fake_package, published) -> None:
    batch = as_batch(np.zeros((2, 224, 224, 3), np.uint8), PROMPTS[:2])
    first = scorer(published).score(batch)
    assert [k[0] for k in batch._memo] == ["imagereward_image"]
    assert torch.equal(scorer(published).score(batch), first)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("mlp.1.bias"), "missing key 'mlp.1.bias'"),
        (
            lambda s: s.update({"blip.text_proj.weight": torch.zeros(1)}),
            "unexpected key 'blip.text_proj.weight'",
        ),
    ],
    ids=["missing", "extra"],
)
def test_checkpoint_that_does_not_fit_is_one_line(fake_package, published, edit, match) -> None:
    checkpoint = published[0]
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointFormatError, match=match) as err:
        scorer(published).setup()
    assert "\n" not in str(err.value)


def test_checkpoint_that_is_not_a_state_dict_names_imagereward(fake_package, published) -> None:
    torch.save([torch.zeros(1)], published[0])
    with pytest.raises(CheckpointFormatError, match=r"^ImageReward checkpoint .* holds no state dict"):
        scorer(published).setup()
