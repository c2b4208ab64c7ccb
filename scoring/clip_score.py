"""CLIP score: how well an image matches its prompt, as torchmetrics' ``CLIPScore`` defines it."""

from __future__ import annotations

import torch
from pydantic import Field

from winnow.scoring.base import Candidates, Scorer, ScorerParams, register
from winnow.scoring.clip import ClipRef, cosine, image_embeddings, load_clip, text_embeddings


class ClipScoreParams(ScorerParams):
    """The CLIP score's settings."""

    clip: ClipRef = Field(
        description="the CLIP whose embeddings are compared (e.g. ViT-L-14 / openai): a name from "
        "the top-level clip section, or an inline {model, pretrained}"
    )


@register
class ClipScoreScorer(Scorer):
    """``max(100 * cos(image_embedding, prompt_embedding), 0)``, in [0, 100], higher is better.

    Identical to ``torchmetrics.multimodal.CLIPScore`` per image (which averages over a batch;
    here every candidate keeps its own score). Prompts longer than the CLIP context (77 tokens
    for OpenAI CLIP) are truncated. Typical values for matching pairs with ViT-L/14 are 20-35:
    compare scores between candidates of one model, not across CLIP models.
    """

    name = "clip_score"
    Params = ClipScoreParams
    params: ClipScoreParams

    def setup(self) -> None:
        """Load the CLIP once per process (shared with every other scorer using the same spec)."""
        load_clip(self.params.clip, self.device)

    def score(self, batch: Candidates) -> torch.Tensor:
        """(n,) float32 CPU scores in [0, 100]."""
        spec = self.params.clip
        images = image_embeddings(batch, spec, self.device)
        texts = text_embeddings(batch, spec, self.device)
        return (100.0 * cosine(images, texts)).clamp(min=0.0).float().cpu()
