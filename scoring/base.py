"""The Scorer interface, the batch it scores, and the registry of scorers by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError


class ScorerParams(BaseModel):
    """Base for a scorer's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """Scores candidates; higher is better. Constructors are cheap; ``setup`` loads weights.

    Subclasses set ``name`` (the key used in configs and as the catalog column
    ``score_<name>``) and ``Params`` (their pydantic parameter model).
    """

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]] = ScorerParams

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


class ScorerConfigError(ValueError):
    """A scorer configuration that cannot be built (unknown name, bad parameter)."""


def build_scorers(config: Mapping[str, Mapping[str, Any]], device: torch.device) -> list[Scorer]:
    """Instantiate the scorers named in ``config`` ({name: params}) without loading weights."""
    scorers = []
    for name, raw in config.items():
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise ScorerConfigError(f"unknown scorer {name!r} (known: {known})")
        cls = REGISTRY[name]
        try:
            params = cls.Params.model_validate(dict(raw or {}))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ScorerConfigError(f"scorers.{name}.{where}: {first['msg']}") from None
        scorers.append(cls(params, device))
    return scorers
