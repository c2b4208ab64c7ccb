"""Head scorers: scorers that are a small model on one CLIP image embedding (the LAION
aesthetic predictor, the NSFW detector, ...).

A head scorer scores a batch by mapping the batch's shared image embedding (computed once per
batch and CLIP spec, ``winnow.scoring.clip.image_embeddings``) through ``score_embeddings``.
Because that is all it needs, ``winnow rescore`` can run it later on the embeddings a run
stored (``winnow.catalog.embeddings``), with no image and no regeneration: a head added to the
config after a run still scores that run's rows.

To add one: subclass ``HeadScorer``, give its ``Params`` a ``clip`` field (a ``ClipRef``), load
the head in ``setup`` and implement ``score_embeddings``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import torch

from winnow.scoring.base import REGISTRY, Candidates, Scorer, ScorerParams
from winnow.scoring.clip import ClipSpec, image_embeddings


class HeadScorer(Scorer):
    """A scorer that is a function of the L2-normalised CLIP image embedding alone."""

    @property
    def clip(self) -> ClipSpec:
        """The CLIP whose image embedding the head reads (its ``Params.clip``)."""
        return self.params.clip  # type: ignore[attr-defined]

    @abstractmethod
    def score_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, d) float32 L2-normalised image embeddings of ``clip`` -> (n,) float32 CPU
        scores on the scorer's scale, higher is better. Loads the head if needed."""

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
