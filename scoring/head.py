"""Head scorers: scorers that are a small model on one CLIP image embedding (the LAION
aesthetic predictor, the NSFW detector, ...).

A head scorer scores a batch by mapping the batch's shared image embedding (computed once per
batch and CLIP spec, ``winnow.scoring.clip.image_embeddings``) through ``score_embeddings``.
Because that is all it needs, ``winnow rescore`` can run it later on the embeddings a run
stored (``winnow.catalog.embeddings``), with no image and no regeneration: a head added to the
config after a run still scores that run's rows.

To add one: subclass ``HeadScorer``, give it ``Params`` derived from ``HeadParams`` (the
``clip`` and ``head`` settings), and set ``heads`` to a ``HeadCache`` that builds the head's
``nn.Module`` (with an ``in_features`` property: the embedding width it takes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, Field

from winnow.models.sources import check_file_ref
from winnow.scoring.base import REGISTRY, Candidates, Scorer, ScorerParams
from winnow.scoring.clip import ClipRef, ClipSpec, image_embeddings, load_clip
from winnow.scoring.head_file import HeadCache, HeadFormatError

FileRef = Annotated[str, AfterValidator(check_file_ref)]  # a head file's reference (models.sources)


class HeadParams(ScorerParams):
    """A head scorer's settings: the CLIP whose image embedding it reads, and its weights."""

    clip: ClipRef = Field(
        description="the CLIP the head was trained on (ViT-L-14 / openai for LAION's heads): "
        "a name from the top-level clip section, or an inline {model, pretrained}"
    )
    head: FileRef = Field(
        description="the head's weights: a local .pth/.safetensors file, hf://org/name[@revision]/FILE, "
        "or https://.../FILE#sha256=HEX"
    )


class HeadScorer(Scorer):
    """A scorer that is a function of the L2-normalised CLIP image embedding alone."""

    Params: ClassVar[type[HeadParams]] = HeadParams
    params: HeadParams
    heads: ClassVar[HeadCache[Any]]  # the scorer's heads, by file reference and device

    @property
    def clip(self) -> ClipSpec:
        """The CLIP whose image embedding the head reads (its ``Params.clip``)."""
        return self.params.clip

    def setup(self) -> None:
        """Load CLIP and head; fail early if the head does not fit the CLIP's embedding width."""
        self.check_width(load_clip(self.clip, self.device).embed_dim)

    def check_width(self, width: int) -> None:
        """Load the head alone and fail if it does not take ``width``-d embeddings of ``clip``
        (``winnow rescore`` passes its stored embeddings' width and loads no CLIP)."""
        ref = self.params.head
        head = self.heads.get(ref, self.device)
        if head.in_features != width:
            raise HeadFormatError(
                f"{self.heads.what} {ref!r} takes {head.in_features}-d embeddings but CLIP "
                f"{self.clip.model!r} gives {width}-d; use the CLIP the head was trained "
                "on (ViT-L-14 / openai for the LAION head)"
            )

    def score_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, d) float32 L2-normalised image embeddings of ``clip`` -> (n,) float32 CPU
        scores on the scorer's scale. Loads the head if needed (cached), checking its width.

        The head reads the embeddings rounded to float16 values, as the catalog stores them
        (``winnow.catalog.embeddings``): a run's head scores are then exactly what ``winnow
        rescore`` computes later from the stored embeddings, whether or not the run stored them."""
        self.check_width(embeddings.shape[1])
        head = self.heads.get(self.params.head, self.device)
        stored = embeddings.half().float()
        with torch.inference_mode():
            return head(stored.to(next(head.parameters()).device)).float().cpu()

    def score(self, batch: Candidates) -> torch.Tensor:
        """The batch's scores, from its shared image embedding."""
        return self.score_embeddings(image_embeddings(batch, self.clip, self.device))


def embedding_spec(scorers: Mapping[str, ScorerParams]) -> ClipSpec | None:
    """The CLIP whose image embedding a run stores, of ``scorers`` ({name: its Params}): the
    first head scorer's, else the first scorer's with a ``clip`` setting (in config order);
    None when no scorer uses a CLIP."""
    heads = [name for name in scorers if issubclass(REGISTRY[name], HeadScorer)]
    for name in [*heads, *scorers]:
        spec = getattr(scorers[name], "clip", None)
        if isinstance(spec, ClipSpec):
            return spec
    return None
