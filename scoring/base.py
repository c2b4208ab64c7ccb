"""The Scorer interface, the batch it scores, and the registry of scorers by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class ScorerParams(BaseModel):
    """Base for a scorer's parameters: unknown keys are errors. A config validates each
    scorer's parameters once (``winnow.pipeline.config``); scorers receive them typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def as_given(self) -> dict[str, Any]:
        """The parameters as the config gave them, JSON-ready: unset defaults left out, named
        CLIP specs inline. Run ids hash this, so a parameter added later with a default, or a
        CLIP moved into the top-level ``clip`` section, keeps existing run ids."""
        return self.model_dump(mode="json", exclude_unset=True)


@dataclass
class Candidates:
    """A batch of candidate images with their prompts, as the generator produced them.

    ``images`` is an (n, 3, H, W) float tensor in [0, 1] on the scoring device. ``memo``
    lets scorers share derived tensors (e.g. one CLIP image embedding for several scorers).
    """

    images: torch.Tensor
    prompts: list[str]
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Return ``compute()``, computed once per batch and ``key``."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class Scorer(ABC):
    """Scores candidates; higher is better, except for safety scorers (``nsfw``: a probability
    of unsafe content), which set ``default_weight = 0``. Constructors are cheap; ``setup``
    loads weights.

    Subclasses set ``name`` (the key used in configs and as the catalog column
    ``score_<name>``) and ``Params`` (their pydantic parameter model).
    """

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]] = ScorerParams
    # The scorer's weight in the combined score when ``select.weights`` does not list it: 0 for
    # a scorer where higher is worse, which gates with ceilings and ranks nothing by default.
    default_weight: ClassVar[float] = 1.0

    def __init__(self, params: ScorerParams, device: torch.device) -> None:
        self.params = params
        self.device = device

    def setup(self) -> None:  # noqa: B027 - optional hook, most scorers load lazily via caches
        """Load weights (once per process: implementations use process-wide caches)."""

    @abstractmethod
    def score(self, batch: Candidates) -> torch.Tensor:
        """Return an (n,) float32 CPU tensor of scores for ``batch``, higher is better."""


REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"scorer name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def build_scorers(params: Mapping[str, ScorerParams], device: torch.device) -> list[Scorer]:
    """Instantiate the scorers of validated ``params`` ({name: its Params}, e.g.
    ``Config.scorers``) without loading weights."""
    scorers = []
    for name, given in params.items():
        cls = REGISTRY[name]
        if not isinstance(given, cls.Params):
            raise TypeError(f"scorer {name!r} takes a {cls.Params.__name__}, not {type(given).__name__}")
        scorers.append(cls(given, device))
    return scorers
